"""How far the warm-up has got: hits served from the store, in all and per scope.

The policy holds its first hits to stricter checks (`CalibratedPolicy.serves_now`): the pool's
first `hits`, and those of every scope first served after them (a new tenant on a warm cache
meets a model grown on other scopes' traffic). The bound is over every hit served from the store,
so the count takes in what other instances served and what a restart finds stored: at least
1 / `max_audit_rate` hits per audit, since no more than that share of hits is audited.
"""

from __future__ import annotations

from collections.abc import Mapping

from memcache import certify


class WarmUpCount:
    """Served hits, this process's and at least those other instances' audits vouch for.

    Not locked: the policy calls it under its own lock.
    """

    def __init__(self, hits: int, max_audit_rate: float) -> None:
        self.hits = hits  # how many hits a warm-up lasts, the pool's and a late scope's
        self.max_audit_rate = max_audit_rate
        self._own = 0  # would-be hits this process let serve (hits and unheld audits)
        self._audits_elsewhere = 0  # other instances' audits read at a sync: they served some too
        self._scope_own: dict[str, int] = {}  # `_own` per scope (at least what its stored audits say)
        self._scope_audits_elsewhere: dict[str, int] = {}  # `_audits_elsewhere` per scope, where known
        self._late: set[str] = set()  # scopes first served after the pool's warm-up, still in their own

    @property
    def served(self) -> int:
        """Hits served from the store so far, as far as this process knows."""
        return self._own + certify.served_at_least(self._audits_elsewhere, self.max_audit_rate)

    def scope_served(self, scope_key: str) -> int:
        """Hits served in one scope, counted as `served` counts them for all."""
        elsewhere = certify.served_at_least(self._scope_audits_elsewhere.get(scope_key, 0), self.max_audit_rate)
        return self._scope_own.get(scope_key, 0) + elsewhere

    @property
    def late_scopes(self) -> frozenset[str]:
        """The scopes in a warm-up of their own now."""
        return frozenset(self._late)

    def in_warm_up(self, scope_key: str | None) -> bool:
        """Whether the next hit (in `scope_key`, where known) is still a warm-up hit: one of the
        pool's first `hits`, or of a late scope's own first `hits`. A scope asked about for the
        first time once the pool's warm-up is over is late from then on."""
        if self.served < self.hits:
            return True
        if scope_key is None:
            return False
        served = self.scope_served(scope_key)
        if served == 0:
            self._late.add(scope_key)
        elif served >= self.hits:
            self._late.discard(scope_key)
        return scope_key in self._late

    def count_hit(self, scope_key: str | None) -> None:
        """One would-be hit let serve here (a hit or an audit served while it is checked)."""
        self._own += 1
        if scope_key is not None:
            self._scope_own[scope_key] = self._scope_own.get(scope_key, 0) + 1

    def count_audit_elsewhere(self, scope_key: str | None) -> None:
        """Another instance served and audited a hit (in `scope_key`, where known)."""
        if scope_key is not None:
            if self.served >= self.hits and not self.scope_served(scope_key):
                self._late.add(scope_key)  # first served, by another instance, after the pool's warm-up
            self._scope_audits_elsewhere[scope_key] = self._scope_audits_elsewhere.get(scope_key, 0) + 1
        self._audits_elsewhere += 1

    def resume(self, audits: int) -> None:
        """The store held `audits` audits at start-up: resume the pool's warm-up from there,
        never past where it was."""
        self._own = max(self._own, certify.served_at_least(audits, self.max_audit_rate))

    def resume_scopes(self, audits: Mapping[str, int]) -> None:
        """The store's audits per scope at start-up. Whether a scope was late is not stored: one
        still short of `hits` resumes a warm-up of its own (the cautious side; with one scope
        the pool's warm-up is not over either)."""
        for scope_key, count in audits.items():
            served = certify.served_at_least(int(count), self.max_audit_rate)
            self._scope_own[scope_key] = max(self._scope_own.get(scope_key, 0), served)
            if 0 < self._scope_own[scope_key] < self.hits:
                self._late.add(scope_key)

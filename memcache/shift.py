"""A label-free alarm for traffic that changes under the policy, at once or over thousands of queries.

The policy's certificate is built from labels and audits of earlier traffic. When the mix of
questions changes at once (a new product, a new tenant, out-of-scope questions starting to
arrive), those labels describe traffic that is no longer there, and confidently wrong hits on
the new questions go unnoticed until enough audits of them come in, and the served false-hit
rate after the change goes well over the bound (docs/DECISIONS.md). Such a change shows before
any label does, in how far each query is from the memory: the share of lookups whose nearest
key is further away than for a quarter of the lookups just before (a quarter by construction
while nothing changes) jumps, while in stationary traffic it drifts down (the memory fills up). A change that builds up
slowly is compared over a longer window (the second scale of `ShiftDetector`).
"""

from __future__ import annotations

import math

import numpy as np

from memcache.errors import ConfigError


class ShiftDetector:
    """Alarms when recent lookups are much further from the memory than the reference traffic.

    Each lookup's top similarity goes in. For each `(recent, reference)` pair in `scales`, the
    reference is the `reference` lookups before the last `recent` ones; the alarm fires when
    the share of recent lookups below the reference's `quantile` exceeds that quantile by `z`
    standard deviations (binomial, with the reference's own sampling noise). After an alarm it
    stays quiet for `cooldown` lookups (in all, where instances pool the test: `counts`), so one
    change raises one alarm.

    Two scales by default. (100, 300) sees an abrupt change within a few dozen lookups; a
    short reference follows the slow drift of a filling memory (a long one lagged so far behind
    it that a shift went unseen). (300, 900) sees a change that builds up over a few thousand
    lookups, which the short window follows along without alarming. `CalibratedPolicy` makes
    one with these defaults; set `policy.shift_detector` to change them. How often each scale
    alarmed, falsely or late, is in docs/DECISIONS.md.
    """

    def __init__(
        self,
        *,
        scales: tuple[tuple[int, int], ...] = ((100, 300), (300, 900)),
        quantile: float = 0.25,
        z: float = 4.0,
        cooldown: int = 1000,
    ) -> None:
        if not scales or any(recent < 10 or reference < 10 for recent, reference in scales):
            raise ConfigError("scales are (recent, reference) numbers of lookups, each >= 10")
        if not 0.0 < quantile < 1.0 or z <= 0:
            raise ConfigError("quantile must lie in (0, 1) and z must be > 0")
        self.scales = tuple((int(recent), int(reference)) for recent, reference in scales)
        self.quantile = quantile
        self.z = z
        self.cooldown = cooldown
        self._size = max(recent + reference for recent, reference in self.scales)
        self._window = np.zeros(2 * self._size)  # each value twice, so the last `size` are one slice
        self._seen = 0
        self._since_alarm = cooldown
        self._parts = 1  # instances sharing the traffic, as the last pooled test counted them

    def quiet(self) -> None:
        """Start a cooldown without an alarm of its own: another instance's alarm covers this change."""
        self._cool_down()

    def _cool_down(self) -> None:
        """Stay quiet for `cooldown` lookups in all: its own, where it shares the traffic with
        the `parts` instances it last pooled with, count that many times over."""
        self._since_alarm = self.cooldown - math.ceil(self.cooldown / self._parts)

    def counts(self, parts: int) -> list[tuple[int, int, int, int, int]]:
        """This detector's share of a test pooled over `parts` instances that divide the traffic.

        Per scale, (lookups below the cut, recent lookups, reference lookups, the scale's recent
        and reference) over its last recent / `parts` lookups, the cut taken from the reference /
        `parts` before them. Summed over the instances, these are one detector's windows over all
        of the traffic, so a change is seen after as many lookups in all as one instance would
        need; each instance alone would need `parts` times as many. Counts of 0 for a scale it has
        not seen enough lookups for.
        """
        self._parts = max(1, int(parts))
        return self._share(self._parts)

    def _share(self, parts: int) -> list[tuple[int, int, int, int, int]]:
        size, out = self._size, []
        slot = (self._seen - 1) % size
        values = self._window[slot + 1 : slot + 1 + size]  # oldest first
        for recent, reference in self.scales:
            mine, before = math.ceil(recent / parts), math.ceil(reference / parts)
            if self._seen < mine + before:
                out.append((0, 0, 0, recent, reference))
                continue
            span = values[size - mine - before :]
            rank = int(self.quantile * (before - 1))
            cut = np.partition(span[:before], rank)[rank]
            out.append((int(np.count_nonzero(span[before:] < cut)), mine, before, recent, reference))
        return out

    def pooled_alarm(self, shares: list[list[tuple[int, int, int, int, int]]]) -> bool:
        """The alarm test of `update` on several instances' `counts` summed (this one's among
        them); True raises the alarm, unless this detector is cooling down from the last one."""
        return self._since_alarm >= self.cooldown and self._alarm(shares)

    def _alarm(self, shares: list[list[tuple[int, int, int, int, int]]]) -> bool:
        """The test, scale by scale, on shares summed (an instance with other scales adds nothing
        to these); an alarm starts the cooldown. Each instance's count is binomial around the
        quantile, and its cut carries its own reference's sampling noise, so the variance of
        the pooled share is the sum of theirs (with one share, the test of one detector)."""
        for recent, reference in self.scales:
            ours = [row for share in shares for row in share if tuple(row[3:]) == (recent, reference)]
            rows = [row[:3] for row in ours if row[1] and row[2]]
            total = sum(m for _, m, _ in rows)
            if total < recent:
                continue
            below = sum(b for b, _, _ in rows)
            noise = sum(m * m / ref for _, m, ref in rows) / total**2
            spread = math.sqrt(self.quantile * (1 - self.quantile) * (1 / total + noise))
            if (below / total - self.quantile) / spread > self.z:
                self._cool_down()
                return True
        return False

    def update(self, similarity: float) -> bool:
        """Add one lookup's top similarity; True when this lookup raises the alarm (the test on
        its own windows: `_alarm` of its one share of all its traffic)."""
        size = self._size
        slot = self._seen % size
        self._window[slot] = self._window[slot + size] = similarity
        self._seen += 1
        self._since_alarm += 1
        return self._since_alarm >= self.cooldown and self._alarm([self._share(1)])

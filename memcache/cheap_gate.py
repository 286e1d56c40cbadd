"""When a cheap model's answer may be served: the cheap path's learner, held to the same bound.

Each reply that names a stored pair is scored by a logistic model over the lookup's
neighbourhood and the pair the reply used. A reply scored at or above the cut-off is served
(a random share of them audited by the strong model); every other reply is escalated, and the
strong model's answer says whether the cheap one was right. Those labels, and the audits, are
what the cut-off is certified on, with the hit policy's statistics (`memcache.certify`): the
lowest score whose upper estimate of the served wrong-answer rate meets the bound. Hits and
cheap answers are each held under the bound, so everything served without the strong model is.
Unlike the hit policy's labels (taken from misses, so audits must check what served hits
claimed), the labels above the cut-off are themselves a random sample of the replies served
there: every reply is labeled until the cut-off exists, and audits are drawn at random after.
The held-out check of observed against predicted errors above the cut-off is that audit, so no
separate claim ratio multiplies the estimate.

A cheap model is asked where it pays: while the recent share of replies that were served saves
more than a cheap call costs. Elsewhere it is asked only within a learning budget: past the
store's first `learn_replies`, the replies it was not served for may cost at most
`learning_budget` of what sending every lookup to the strong model would, the baseline the saving
is reported against (so a cheap model that is never served adds at most that share of it to the
bill, past those first replies, however few lookups memory serves). The lookups and replies of
earlier processes on the same store count too (`resume_budget`), so a restart neither forgets
what was spent nor starts without room. A reply counts as unserved from the moment it is asked
for, so replies asked for at once, before any is read, cannot overrun the budget together. A
cheap model that is often wrong thus stops being used, without configuration, and one that
improves is still noticed.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from memcache import certify
from memcache.cheap import CheapReply, MemoryPair
from memcache.errors import ConfigError
from memcache.policy import LabelBuffer
from memcache.types import CheapPathStatus

GATE_FEATURES = (
    "similarity", "margin", "agreement", "entry_gap", "log_odds_if_nearest_used", "log_odds_if_other_used",
    "used_nearest", "used_rank", "used_similarity", "used_margin",
)  # fmt: skip
_LOGIT_CLIP = 1e-4  # the confidence enters as log-odds, split by the pair used: a reply that names the nearest
# entry is right with odds = that entry's odds x how much likelier the model names a right entry than a wrong
# one; a reply that names another is likelier right the less likely the nearest was. A linear model over
# these (no pairwise products) has 11 weights, few enough for the hundreds of labels a young cheap path has.
_HIT_FEATURES = (0, 1, 2, 9)  # of `memcache.policy.FEATURE_NAMES`: similarity, margin, agreement, entry_gap


def gate_features(
    hit_features: Sequence[float], confidence: float, pairs: Sequence[MemoryPair], reply: CheapReply
) -> tuple[float, ...]:
    """The lookup's own neighbourhood as the hit policy saw it, with its confidence that the
    nearest entry is right (learned from every paid answer, so the cheap path starts from what
    the hit policy knows), and the pair the reply used: whether it is the nearest, how many
    nearer pairs it passed over (a reader that skips them has judged them, and what that is
    worth differs by model, so the labels weigh it), its similarity, and its margin over the
    best other pair."""
    p = min(max(float(confidence), _LOGIT_CLIP), 1.0 - _LOGIT_CLIP)
    log_odds = math.log(p / (1.0 - p))
    neighbourhood = tuple(float(hit_features[i]) for i in _HIT_FEATURES)
    split = (log_odds, 0.0) if reply.used == 0 else (0.0, log_odds)
    return (*neighbourhood, *split, *used_pair_features(pairs, reply))


def used_pair_features(pairs: Sequence[MemoryPair], reply: CheapReply) -> tuple[float, float, float, float]:
    """The pair a reply used: whether it is the nearest, its rank, its similarity, and its margin
    over the best other pair (the last four of `GATE_FEATURES`)."""
    used = pairs[reply.used].similarity
    others = max((p.similarity for i, p in enumerate(pairs) if i != reply.used), default=0.0)
    return float(reply.used == 0), float(reply.used), used, used - others


def _check(features: Sequence[float]) -> None:
    if len(features) != len(GATE_FEATURES):
        raise ConfigError(f"expected {len(GATE_FEATURES)} features {GATE_FEATURES}, got {len(features)}")


class CheapGate:
    """Serve, audit or escalate a cheap model's reply, under `max_false_answer_rate`.

    Args:
        max_false_answer_rate: bound on wrong served cheap answers / served cheap answers.
        cost_ratio: a cheap call's price as a share of a strong call's; decides whether asking
            the cheap model pays (None: 0.1 until `observe_cost` has seen both prices).
        learning_budget: what unserved replies may cost, as a share of sending every lookup to the
            strong model (`count_lookups_with` says how many there were, `resume_budget` what
            earlier processes on the store spent).
        learn_replies: replies asked for before the budget applies (the store's first ones).
        The rest are the hit policy's settings, with the same meaning (`CalibratedPolicy`).
    """

    def __init__(
        self,
        max_false_answer_rate: float = 0.02,
        *,
        confidence_level: float = 0.95,
        min_audit_rate: float = 0.02,
        max_audit_rate: float = 0.2,
        l2: float = 1.0,
        folds: int = 5,
        max_labels: int = 20_000,
        warmup_hits: int = 300,
        warmup_share: float = 0.75,
        cost_ratio: float | None = None,
        learning_budget: float = 0.02,
        learn_replies: int = 100,
        recent_window: int = 500,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < max_false_answer_rate < 1.0:
            raise ConfigError(f"max_false_answer_rate must be in (0, 1), got {max_false_answer_rate!r}")
        if cost_ratio is not None and not 0.0 <= cost_ratio:
            raise ConfigError(f"cost_ratio must be >= 0, got {cost_ratio!r}")
        if not 0.0 <= learning_budget <= 1.0:
            raise ConfigError(f"learning_budget must be in [0, 1], got {learning_budget!r}")
        self.max_false_answer_rate = max_false_answer_rate
        self.confidence_level, self.min_audit_rate, self.max_audit_rate = (
            confidence_level,
            min_audit_rate,
            max_audit_rate,
        )
        self.l2, self.folds, self.warmup_hits, self.warmup_share = l2, folds, warmup_hits, warmup_share
        self.cost_ratio, self.learn_replies, self.learning_budget = cost_ratio, learn_replies, learning_budget
        self.max_labels = max_labels
        self._z = certify.z_for(confidence_level)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fit_lock = threading.Lock()  # one refit at a time, outside `_lock`
        self._labels = LabelBuffer(len(GATE_FEATURES), max_labels)
        self._observed = self._fitted_at = 0
        self._claims: deque[tuple[float, bool]] = deque(maxlen=2000)
        self._recent: deque[tuple[float, ...]] = deque(maxlen=2000)  # replies' features: the traffic served from
        self._outcomes: deque[bool] = deque(maxlen=recent_window)  # asked replies: served or not
        self._weights: np.ndarray | None = None
        self._mean, self._scale = np.zeros(len(GATE_FEATURES)), np.ones(len(GATE_FEATURES))
        self.threshold: float | None = None
        self.bound: float | None = None
        self.region_labels = 0
        self._served = 0
        self._asked = self._unserved = 0
        self._before = (0, 0)  # lookups and unserved replies of earlier processes (`resume_budget`)
        self._prices: dict[str, deque[float]] = {"cheap": deque(maxlen=200), "strong": deque(maxlen=200)}
        self._hits_served: Callable[[], int] = lambda: 0
        self._lookups: Callable[[], int] = lambda: 0

    # -- asking -------------------------------------------------------------------------------

    def wants_reply(self) -> bool:
        """Ask the cheap model about this miss? Where it pays, else within the learning budget."""
        with self._lock:
            lookups, unserved = self._before[0] + self._lookups(), self._before[1] + self._unserved
            # this reply too, were it not served: the budget is a cap, not a line crossed by one reply
            within_budget = (unserved + 1) * self._cost_ratio() <= self.learning_budget * lookups
            ask = self._asked < self.learn_replies or self._pays() or within_budget
            self._asked += int(ask)
            self._unserved += int(ask)  # unserved until `decide` serves it: replies still in flight count
            return ask

    def withdraw(self) -> None:
        """A reply `wants_reply` allowed that was not asked for after all (no pair left to pass)."""
        with self._lock:
            self._asked, self._unserved = max(self._asked - 1, 0), max(self._unserved - 1, 0)

    def _pays(self) -> bool:  # hold the lock
        if self.threshold is None:
            return False
        if not self._outcomes:  # a cut-off certified on stored labels: asked until its replies say
            return True
        served = sum(self._outcomes) / len(self._outcomes)
        return served * (1.0 - self._audit_rate()) > self._cost_ratio()

    def _cost_ratio(self) -> float:
        if self.cost_ratio is not None:
            return self.cost_ratio
        cheap, strong = self._prices["cheap"], self._prices["strong"]
        if cheap and strong and sum(strong) > 0:
            return (sum(cheap) / len(cheap)) / (sum(strong) / len(strong))
        return 0.1

    def observe_cost(self, path: str, cost: float) -> None:
        """One call of the "cheap" or "strong" model and its price in any unit (0: unpriced)."""
        with self._lock:
            if cost > 0:
                self._prices[path].append(cost)

    def record_abstain(self) -> None:
        """An asked reply that named no pair (or did not parse): it saved nothing."""
        with self._lock:
            self._outcomes.append(False)

    # -- deciding -------------------------------------------------------------------------------

    def _audit_rate(self) -> float:  # hold the lock
        return certify.audit_rate(
            self._z, self.max_false_answer_rate, self.region_labels, self.min_audit_rate, self.max_audit_rate
        )

    @property
    def target(self) -> float:
        """The rate the cut-off is certified against: lower while the first answers are served.

        The warm-up keeps the running rate of answers served without the strong model under
        the bound while few have been served; the hits count among them (`count_hits_with`), so
        a cheap path that starts beside hundreds of hits starts at the whole bound."""
        served = self._served + self._hits_served()
        return certify.warmup_target(self.max_false_answer_rate, served, self.warmup_hits, self.warmup_share)

    def count_hits_with(self, hits_served: Callable[[], int]) -> None:
        """Where the warm-up reads how many hits were served (the hit policy's count)."""
        self._hits_served = hits_served

    def count_lookups_with(self, lookups: Callable[[], int]) -> None:
        """Where the learning budget reads how many lookups there were (the controller's count)."""
        self._lookups = lookups

    def resume_budget(self, lookups: int, replies: int, served: int) -> None:
        """What earlier processes on the store spent of the learning budget (the store's lifetime
        counters): their lookups, the cheap replies they asked for, and how many were served."""
        with self._lock:
            self._before = (max(int(lookups), 0), max(int(replies) - int(served), 0))
            self._asked = max(self._asked, int(replies))

    def confidence(self, features: Sequence[float]) -> float:
        with self._lock:
            return self._confidence(features)

    def _confidence(self, features: Sequence[float]) -> float:
        if self._weights is None:
            return 0.0
        x = certify.design(np.asarray([features], dtype=float), self._mean, self._scale, products=False)
        return float(certify.sigmoid(x @ self._weights)[0])

    def decide(self, features: Sequence[float]) -> tuple[str, float]:
        """("serve" | "audit" | "escalate", confidence) for a reply with these features."""
        _check(features)
        with self._lock:
            self._recent.append(tuple(features))
            confidence = self._confidence(features)
            if self.threshold is None or confidence < self.threshold:
                self._outcomes.append(False)
                return "escalate", confidence
            self._outcomes.append(True)
            self._served += 1
            self._unserved = max(self._unserved - 1, 0)  # counted unserved when asked
            return ("audit" if self._rng.random() < self._audit_rate() else "serve"), confidence

    # -- learning -------------------------------------------------------------------------------

    def observe(self, features: Sequence[float], correct: bool, claimed: float | None = None) -> None:
        """A reply the strong model was asked about too: was the cheap answer right? `claimed`
        is the confidence it was served with, for an audit."""
        _check(features)
        with self._lock:
            self._labels.append(features, bool(correct), None)
            self._observed += 1
            if claimed is not None:
                self._claims.append((float(claimed), bool(correct)))
            due = certify.refit_due(self._observed, self._fitted_at)
        if due:
            self.refit()

    def load(self, labels: Iterable[tuple[Sequence[float], bool, float | None]]) -> None:
        """Stored labels at start-up (features, right, claimed confidence or None); refit once."""
        rows = [(f, c, k) for f, c, k in labels if len(f) == len(GATE_FEATURES)]
        with self._lock:
            for features, correct, claimed in rows:
                self._labels.append(features, bool(correct), None)
                if claimed is not None:
                    self._claims.append((float(claimed), bool(correct)))
            self._served = max(self._served, certify.served_at_least(len(self._claims), self.max_audit_rate))
            self._observed += len(rows)
            self._asked += len(rows)
        if rows:
            self.refit()

    @property
    def labels(self) -> int:
        return self._observed

    @property
    def claim_ratio(self) -> float:
        return certify.claim_ratio(self._claims, self.confidence_level)

    def refit(self) -> None:
        """Fit on a copy of the labels and install the model and its cut-off (decisions keep the
        previous ones meanwhile)."""
        with self._fit_lock:
            self._refit_locked()

    def _refit_locked(self) -> None:
        with self._lock:
            self._fitted_at = self._observed
            x, y, _ = self._labels.arrays()
            traffic = np.asarray(self._recent, dtype=float) if self._recent else None
            target, warm = self.target, self._weights
        y = y.astype(float)
        fitted = certify.cross_fit(
            x, y, self.folds, lambda m, labels: certify.fit_logistic(m, labels, warm, self.l2), products=False
        )
        chosen = None
        if fitted is not None:
            p_traffic = None
            if traffic is not None:
                design = certify.design(traffic, fitted.mean, fitted.scale, products=False)
                p_traffic = certify.sigmoid(design @ fitted.weights)
            chosen = certify.choose_cut_off(  # claim_ratio 1: see the module's docstring
                fitted.held_out_logits, y, p_traffic, claim_ratio=1.0, z=self._z,
                bound=self.max_false_answer_rate, target=target,
            )  # fmt: skip
        with self._lock:
            if fitted is None:
                self._weights = None
            else:
                self._mean, self._scale, self._weights = fitted.mean, fitted.scale, fitted.weights
            self.threshold = None if chosen is None else chosen.threshold
            self.bound = None if chosen is None else chosen.estimate
            self.region_labels = 0 if chosen is None else chosen.labels

    def status(self) -> CheapPathStatus:
        """What `stats()` reports of the cheap path's learning."""
        with self._lock:
            return CheapPathStatus(self.threshold, self.bound, self.target, self._observed)

"""The hit-or-escalate decision, and what it learns from answers that were paid for.

`CalibratedPolicy` takes a bound on wrong hits instead of a cosine threshold. Every paid
answer is a label ("would the nearest entry have been right?"). A logistic model over a few
neighbourhood features ranks lookups by how likely the nearest entry is right; the serving
cut-off is the lowest score at which an upper confidence bound of the served error rate stays
under `max_false_hit_rate` (see `_choose_threshold`; every cut-off is tried, not only those
above the first one that fails). A small, adaptive share of would-be hits is audited so the
served region keeps receiving labels, and so the policy can check what it claimed when it
served against what the audits found (`claim_ratio`).
Hindsight labels (see `memcache.hindsight`) replace the arrival-time label of each recent paid
query with one taken against today's index, so each paid query still counts once.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from memcache import certify
from memcache.errors import ConfigError
from memcache.shift import ShiftDetector
from memcache.types import Candidate, Decision, EntryStats, HindsightExample, PolicyStatus
from memcache.warm_up import WarmUpCount

FEATURE_NAMES = (
    "similarity",
    "margin",
    "agreement",
    "support",
    "entry_failure_rate",
    "kth_similarity",
    "second_similarity",
    "entry_similarity",
    "entry_margin",
    "entry_gap",
)
# 2: kth and second similarity added (version 1 files had five features); 3: entry centroid similarity and margin;
# 4: entry gap
CALIBRATION_VERSION = 4
_ENTRY_MARGIN = FEATURE_NAMES.index("entry_margin")
_VOTE_TEMPERATURE = 0.05
log = logging.getLogger("memcache")


@runtime_checkable
class Policy(Protocol):
    """Decides hit/miss/audit for one lookup, and learns from paid answers.

    `observe` gets the key the paid answer was stored under (None where there was none), so a
    policy that keeps hindsight labels can let a later label of the same key replace it.
    """

    max_false_hit_rate: float

    def decide(self, candidates: Sequence[Candidate], entries: Mapping[int, EntryStats]) -> Decision: ...

    def observe(self, features: Sequence[float], correct: bool, *, key: int | None = None) -> None: ...


@runtime_checkable
class LearningPolicy(Policy, Protocol):
    """A policy that also learns from what the store kept and from audits (`CalibratedPolicy`).

    At start-up it is given the newest `claim_limit` audit claims, the newest `label_limit`
    labels and the audits a shift hold still owes; then each audit's outcome against the
    confidence the hit was served with, and hindsight labels of recent paid queries. A decision
    with `shift_detected` starts a hold of `shift_hold_audits` audits, which the caller persists.
    """

    claim_limit: int | None
    label_limit: int | None
    shift_hold_audits: int

    def decide(
        self,
        candidates: Sequence[Candidate],
        entries: Mapping[int, EntryStats],
        *,
        scope_size: int | None = None,
        scope_key: str | None = None,
    ) -> Decision:
        """As `Policy.decide`; `scope_size` is how many questions the request's scope holds, and
        `scope_key` which scope it is."""
        ...

    @property
    def served(self) -> int:
        """Hits served so far, as far as this instance knows (the cheap path's warm-up counts them)."""
        ...

    @property
    def holding(self) -> bool:
        """True while would-be hits are escalated unserved after a detected shift."""
        ...

    def load_audit_claims(self, claims: Iterable[tuple[float, bool]]) -> None: ...

    def load_scope_audits(self, audits: Mapping[str, int]) -> None:
        """How many audits each scope's hits had, kept by the store (at start-up)."""
        ...

    def load_labels(self, labels: Iterable[tuple[Sequence[float], bool]]) -> None: ...

    def resume_hold(self, audits: int) -> None: ...

    def shorten_hold(self, audits: int) -> None: ...

    def shift_counts(self, parts: int) -> list[tuple[int, int, int, int, int]] | None:
        """This instance's share of a shift test pooled over `parts` instances; None where the
        policy tests for no shift (then it takes no part)."""
        ...

    def pooled_shift(self, shares: list[list[tuple[int, int, int, int, int]]]) -> bool:
        """The shift test on the instances' shares summed; True on an alarm (a hold has started)."""
        ...

    def observe_audit(
        self, claimed_confidence: float, correct: bool, *, elsewhere: bool = False, scope_key: str | None = None
    ) -> None: ...

    def set_hindsight(self, examples: Sequence[HindsightExample], entries: Mapping[int, EntryStats]) -> None: ...

    def status(self) -> PolicyStatus: ...


def neighbourhood_features(
    candidates: Sequence[Candidate], entries: Mapping[int, EntryStats]
) -> tuple[int, float, tuple[float, ...]]:
    """(best entry id, its similarity, features) from in-scope candidates sorted by similarity.

    Features: top similarity; margin to the closest key of any other entry (0 if none);
    similarity-weighted share of neighbours that hold the same answer; share of the k
    neighbours that hold it; the entry's smoothed failure rate in earlier checks; the
    similarity of the k-th and of the second neighbour (how crowded the neighbourhood is,
    which lifted correct hits at the bound; docs/DECISIONS.md); the similarity to
    the best entry's centroid and its margin over the best other candidate entry's centroid
    (`Candidate.entry_similarity`, see `memcache.centroids`; a one-key entry's centroid is
    its key); the best entry's gap (`Candidate.entry_gap`: how much further the request is
    from the entry's keys than they are from one another), for a one-key entry the top
    similarity minus 1, as if its keys were identical (an entry seen once is not yet known to
    be worded in many ways).
    """
    best = candidates[0]
    s1 = best.similarity
    other = max((c.similarity for c in candidates if c.entry_id != best.entry_id), default=0.0)
    weights = np.exp((np.array([c.similarity for c in candidates]) - s1) / _VOTE_TEMPERATURE)
    same = np.array([c.entry_id == best.entry_id for c in candidates])
    agreement = float(weights[same].sum() / weights.sum())
    support = float(same.mean())
    stats = entries.get(best.entry_id)
    failure_rate = 0.0 if stats is None else stats.failures / (stats.checks + 2)
    kth = candidates[-1].similarity if len(candidates) > 1 else 0.0
    second = candidates[1].similarity if len(candidates) > 1 else 0.0
    centroid: dict[int, float] = {}
    for c in candidates:
        centroid.setdefault(c.entry_id, c.similarity if c.entry_similarity is None else c.entry_similarity)
    to_entry = centroid[best.entry_id]
    to_other_entry = max((s for e, s in centroid.items() if e != best.entry_id), default=0.0)
    gap = s1 - 1.0 if best.entry_gap is None else best.entry_gap
    features = (s1, s1 - other, agreement, support, failure_rate, kth, second, to_entry, to_entry - to_other_entry, gap)
    return best.entry_id, s1, features


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class LabelBuffer:
    """Arrival-time labels (features, right, key id) in numpy arrays, oldest first.

    A ring of `capacity` rows that drops the oldest, or a growing buffer when capacity is None.
    Why arrays rather than tuples of floats: a refit copies the labels, and building an array
    from tuples holds the GIL many times longer (lookups in other threads wait); a label also
    takes a fraction of the memory (docs/DECISIONS.md).
    """

    _NO_KEY = -1  # key ids are positive

    def __init__(self, width: int, capacity: int | None) -> None:
        self.capacity = capacity
        size = capacity if capacity is not None else 1024
        self._x = np.empty((size, width))
        self._y = np.empty(size, dtype=bool)
        self._key = np.empty(size, dtype=np.int64)
        self._start = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, features: Sequence[float], correct: bool, key: int | None) -> None:
        size = len(self._y)
        if self._len == size and self.capacity is None:  # grow, oldest first again
            self._x, self._y, self._key = (np.concatenate([a, np.empty_like(a)]) for a in self.arrays())
            self._start, size = 0, 2 * size
        i = (self._start + self._len) % size
        if self._len == size:  # full ring: the new label takes the oldest one's row
            self._start = (self._start + 1) % size
        else:
            self._len += 1
        self._x[i], self._y[i], self._key[i] = features, correct, self._NO_KEY if key is None else key

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (features, right, key ids; -1 where none), oldest first."""
        order = (self._start + np.arange(self._len)) % len(self._y)
        return self._x[order], self._y[order], self._key[order]


class ThresholdPolicy:
    """A static cosine cut-off: serve when the nearest key's similarity >= threshold.

    The baseline that GPTCache-style caches ship; kept for sweeps and for users who want it.
    Confidence is the observed share of correct labels at or above the threshold.
    """

    def __init__(self, threshold: float, *, max_false_hit_rate: float = 1.0) -> None:
        if not _is_number(threshold) or not -1.0 <= threshold <= 1.0:
            raise ConfigError("threshold is a cosine similarity and must lie in [-1, 1]")
        self.threshold = threshold
        self.max_false_hit_rate = max_false_hit_rate
        self._right = 0
        self._wrong = 0

    def decide(self, candidates: Sequence[Candidate], entries: Mapping[int, EntryStats]) -> Decision:
        if not candidates:
            return Decision("miss", None, float("-inf"), 0.0)
        entry_id, s1, features = neighbourhood_features(candidates, entries)
        confidence = (self._right + 1) / (self._right + self._wrong + 2)
        action = "hit" if s1 >= self.threshold else "miss"
        return Decision(action, entry_id, s1, confidence if action == "hit" else 0.0, features)

    def observe(self, features: Sequence[float], correct: bool, *, key: int | None = None) -> None:
        if features and features[0] >= self.threshold:
            if correct:
                self._right += 1
            else:
                self._wrong += 1


def _check_settings(
    *,
    max_false_hit_rate,
    confidence_level,
    min_audit_rate,
    max_audit_rate,
    l2,
    shift_hold_audits,
    max_labels,
    folds,
    warmup_hits,
    warmup_share,
    warmup_hit_share,
    warmup_entry_margin,
) -> None:
    """ConfigError for a `CalibratedPolicy` setting out of range."""

    def whole(value, minimum: int) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and value >= minimum

    if not _is_number(max_false_hit_rate) or not 0.0 < max_false_hit_rate < 1.0:
        raise ConfigError("max_false_hit_rate must be a number in (0, 1), e.g. 0.02 for at most 2% wrong hits")
    if not _is_number(confidence_level) or not 0.5 <= confidence_level < 1.0:
        raise ConfigError("confidence_level must lie in [0.5, 1)")
    if not 0.0 <= min_audit_rate <= max_audit_rate <= 1.0:
        raise ConfigError("need 0 <= min_audit_rate <= max_audit_rate <= 1")
    if shift_hold_audits < 0:
        raise ConfigError("shift_hold_audits is a number of audits and must be >= 0")
    if max_labels is not None and max_labels < 1:
        raise ConfigError("max_labels is a number of labels and must be >= 1 (None keeps all)")
    if not whole(folds, 2):
        raise ConfigError("folds is the number of cross-fitting folds and must be a whole number >= 2")
    if not whole(warmup_hits, 0):
        raise ConfigError("warmup_hits is a number of served hits and must be >= 0")
    if not _is_number(warmup_share) or not 0.0 < warmup_share <= 1.0:
        raise ConfigError("warmup_share is a share of the bound in (0, 1]")
    if warmup_hit_share is not None and (not _is_number(warmup_hit_share) or not 0.0 < warmup_hit_share <= 1.0):
        raise ConfigError("warmup_hit_share is a share of the bound in (0, 1], or None for no per-hit floor")
    if warmup_entry_margin is not None and (
        not _is_number(warmup_entry_margin) or not 0.0 <= warmup_entry_margin <= 1.0
    ):
        raise ConfigError("warmup_entry_margin is a difference of cosine similarities in [0, 1], or None for none")
    if not _is_number(l2) or l2 < 0:
        raise ConfigError("l2 is the logistic fit's penalty and must be a number >= 0")


# What a calibration file keeps of a policy's settings, by constructor argument name.
_SETTINGS = (
    "max_false_hit_rate", "confidence_level", "min_audit_rate", "max_audit_rate", "l2", "shift_hold_audits",
    "max_labels", "folds", "warmup_hits", "warmup_share", "warmup_hit_share", "warmup_entry_margin",
)  # fmt: skip


def _read_calibration(path: str | Path) -> dict:
    """A calibration file's data, if it is one this library reads."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read calibration file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != "memcache.CalibratedPolicy":
        raise ConfigError(f"{path} is not a memcache calibration file")
    if data.get("feature_names") != list(FEATURE_NAMES):
        raise ConfigError(
            f"{path} is a calibration file of version {data.get('version')}, this library reads version "
            f"{CALIBRATION_VERSION}: run `memcache calibrate` again"
        )
    return data


class CalibratedPolicy:
    """Serve only where the labeled wrong-hit rate is bounded by `max_false_hit_rate`.

    Args:
        max_false_hit_rate: the bound on wrong hits / hits, in (0, 1). 0.02 means at most
            2% of served hits may be wrong.
        confidence_level: how sure the upper bound must be (one-sided), e.g. 0.95.
        min_audit_rate / max_audit_rate: share of would-be hits re-asked of the strong model;
            starts near the maximum and falls as labels in the served region accumulate.
        seed: seed of the audit coin, for reproducible replays.
        detect_shifts: watch the traffic for changes, abrupt or building up (`memcache.shift.ShiftDetector`).
        shift_hold_audits: after a change, how many would-be hits are escalated (checked, not
            served) before serving resumes; 0 only records the change. docs/EVAL.md has what
            the default and other lengths did with a late out-of-scope shift.
        max_labels: arrival-time labels kept for fitting, newest first (None: all). Bounds the
            policy's memory and each refit's time (linear in the labels, run
            outside the lock that `decide` takes); 66 weights gain nothing from millions of
            labels, and the newest describe today's traffic. `python -m memcache.eval.policy_bench`
            measures both.
        folds: cross-fitting folds. The model serves as the mean of `folds` fits, each on all
            labels but one fold; the cut-off is certified on each label's prediction by the fit
            that did not see it, so the check measures the model on queries it was not fitted to.
        warmup_hits / warmup_share: the cut-off is certified against `warmup_share` of the
            bound at the first hit, rising to the whole bound over `warmup_hits` served hits
            (see `target`).
        warmup_hit_share: during the warm-up, each hit must also be sure on its own: a would-be
            hit whose estimated error (1 - confidence) exceeds this share of the bound is paid
            for instead (a miss, and a label). None: no such floor. See `serves_now`. This floor
            and the next also hold over the first `warmup_hits` hits of a scope first served
            after the pool's warm-up.
        warmup_entry_margin: during the warm-up, each hit's answer must also lead the nearest
            other answer: the request must be at least this much more similar to the best
            entry's centroid than to any other candidate entry's (the `entry_margin` feature).
            None: no such floor. See `serves_now`.
    """

    def __init__(
        self,
        max_false_hit_rate: float = 0.02,
        *,
        confidence_level: float = 0.95,
        min_audit_rate: float = 0.02,
        max_audit_rate: float = 0.2,
        l2: float = 1.0,
        recent_window: int = 2000,
        seed: int | None = None,
        detect_shifts: bool = True,
        shift_hold_audits: int = 270,
        max_labels: int | None = 50_000,
        folds: int = 5,
        warmup_hits: int = 300,
        warmup_share: float = 0.75,
        warmup_hit_share: float | None = 0.5,
        warmup_entry_margin: float | None = 0.02,
    ) -> None:
        settings = dict(
            max_false_hit_rate=max_false_hit_rate, confidence_level=confidence_level, min_audit_rate=min_audit_rate,
            max_audit_rate=max_audit_rate, l2=l2, shift_hold_audits=shift_hold_audits, max_labels=max_labels,
            folds=folds, warmup_hits=warmup_hits, warmup_share=warmup_share, warmup_hit_share=warmup_hit_share,
            warmup_entry_margin=warmup_entry_margin,
        )  # fmt: skip
        _check_settings(**settings)
        for name, value in settings.items():  # the `_SETTINGS` a calibration file keeps
            setattr(self, name, value)
        self._z = certify.z_for(confidence_level)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # held briefly: decide, observe, and installing a fit
        self._fit_lock = threading.Lock()  # one fit at a time, outside `_lock`
        self.recent_window = recent_window
        self._arrival = LabelBuffer(len(FEATURE_NAMES), max_labels)  # labels taken when the paid query arrived
        self._observed = 0  # arrival-time labels ever observed (`_arrival` keeps the newest)
        self._hx: list[tuple[float, ...]] = []  # hindsight labels of recent paid keys
        self._hy: list[bool] = []
        self._hkeys = np.empty(0, dtype=np.int64)  # the keys whose arrival labels they replace
        self._fitted_at = 0
        self._weights: np.ndarray | None = None
        self._mean = np.zeros(len(FEATURE_NAMES))
        self._scale = np.ones(len(FEATURE_NAMES))
        self.threshold: float | None = None
        self.region_labels = 0
        self.region_errors = 0
        self.estimated_false_hit_rate: float | None = None
        self.bound: float | None = None
        self._recent: deque[tuple[float, ...]] = deque(maxlen=recent_window)
        self._claims: deque[tuple[float, bool]] = deque(maxlen=recent_window)  # audits: (claimed, right)
        self.shift_detector = ShiftDetector() if detect_shifts else None
        self.shifts_detected: list[int] = []  # at which lookup (with a candidate) each shift was detected
        self._lookups = 0
        self._hold_left = 0  # would-be hits still to be escalated, unserved, after a shift
        self.warm_up = WarmUpCount(warmup_hits, max_audit_rate)  # how far the warm-up got, pooled and per scope

    # -- deciding ---------------------------------------------------------------------------

    def confidence(self, features: Sequence[float]) -> float:
        """Estimated probability that the nearest entry's answer is right (0 before any fit)."""
        with self._lock:  # a refit in another thread installs weights, mean and scale together
            return self._confidence(features)

    def _confidence(self, features: Sequence[float]) -> float:
        if self._weights is None:
            return 0.0
        x = np.asarray([features], dtype=float)
        return float(certify.sigmoid(certify.design(x, self._mean, self._scale) @ self._weights)[0])

    @property
    def audit_rate(self) -> float:
        return certify.audit_rate(
            self._z, self.max_false_hit_rate, self.region_labels, self.min_audit_rate, self.max_audit_rate
        )

    def decide(
        self,
        candidates: Sequence[Candidate],
        entries: Mapping[int, EntryStats],
        *,
        scope_size: int | None = None,
        scope_key: str | None = None,
    ) -> Decision:
        if not candidates:
            return Decision("miss", None, float("-inf"), 0.0)
        entry_id, s1, features = neighbourhood_features(candidates, entries)
        with self._lock:
            self._lookups += 1
            shifted = self.shift_detector is not None and self.shift_detector.update(s1)
            if shifted:
                self._on_shift()
            self._recent.append(features)
            confidence = self._confidence(features)
            if (
                self.threshold is None
                or confidence < self.threshold
                or (scope_size is not None and scope_size < self.min_scope_size)
                or not self._serves_now(confidence, features, scope_key)  # after: only grown scopes are counted
            ):
                return Decision("miss", entry_id, s1, confidence, features, shift_detected=shifted)
            if self._hold_left:
                return Decision("audit", entry_id, s1, confidence, features, held=True, shift_detected=shifted)
            action = "audit" if self._rng.random() < self.audit_rate else "hit"
            self.warm_up.count_hit(scope_key)
        return Decision(action, entry_id, s1, confidence, features)

    @property
    def min_scope_size(self) -> int:
        """The fewest stored questions a scope needs before its lookups may be served as hits:
        as many as a cut-off needs labels (`certify.min_labels`, 133 at 2% and 95%).

        Why: the certificate is pooled over every scope, and a scope much younger than those
        its labels came from is not like them. A new tenant on a warm cache has a memory of a
        few questions: nothing near the request but the one or two stored, a neighbourhood a
        full memory never shows, on which the model extrapolates to any confidence
        (docs/DECISIONS.md), and a domain whose right answers are mostly not stored yet.
        In a cache of one scope this never binds: a cut-off already needs that
        many labels, each a stored question of that scope."""
        return math.ceil(certify.min_labels(self._z, self.max_false_hit_rate))

    @property
    def target(self) -> float:
        """The false-hit rate the cut-off is certified against now: `warmup_share` of the bound
        at the first hit, rising linearly to the whole bound over `warmup_hits` served hits.

        Why: the running rate over few hits is noisy. Even at half the bound, many streams show
        a running rate over the bound somewhere after their 100th hit, by chance alone
        (docs/DECISIONS.md); the first hits are also served on the youngest model. The margin is spent where the running rate
        is most fragile, and given back once it is not."""
        return certify.warmup_target(self.max_false_hit_rate, self.served, self.warmup_hits, self.warmup_share)

    @property
    def served(self) -> int:
        """Hits served from the store so far, as far as this instance knows: its own, and at
        least 1 / `max_audit_rate` per audit of another instance's (`observe_audit`)."""
        return self.warm_up.served

    def scope_served(self, scope_key: str) -> int:
        """Hits served in one scope, as `served` counts them for all: this instance's, and at least
        1 / `max_audit_rate` per audit of another instance's (or a stored one) in that scope."""
        return self.warm_up.scope_served(scope_key)

    def serves_now(
        self, confidence: float, features: Sequence[float] | None = None, *, scope_key: str | None = None
    ) -> bool:
        """Whether a would-be hit above the cut-off is sure enough on its own to serve now: after
        the warm-up always; during it, only if its estimated error is at most `warmup_hit_share`
        of the bound and (given its `features`) its entry margin is at least `warmup_entry_margin`.
        The warm-up covers the pool's first `warmup_hits` hits, and those of every scope
        (`scope_key`, where given) first served after them.

        Why: the cut-off bounds the average error of what it serves, and the hits just above it
        are the likeliest to be wrong. Over the first few hundred hits that average is taken over
        few of them, so a handful of marginal hits can carry the running rate over the bound;
        a user watching a new deployment sees that rate, not the certificate. The margin floor
        is the same idea without the model: a young model is most overconfident between two
        answers the request is about as close to (confusable intents), and no confidence says so.
        A scope first served after the pool's warm-up (a new tenant on a warm cache) meets a
        model grown on other scopes' traffic, and its user watches its own rate: it gets a
        warm-up of its own (docs/DECISIONS.md). A scope served from the pool's warm-up on grew
        up with the model; with one scope nothing changes."""
        with self._lock:
            return self._serves_now(confidence, features, scope_key)

    def _serves_now(self, confidence: float, features: Sequence[float] | None, scope_key: str | None) -> bool:
        if not self.warm_up.in_warm_up(scope_key):
            return True
        if self.warmup_hit_share is not None and 1.0 - confidence > self.warmup_hit_share * self.max_false_hit_rate:
            return False
        margin = None if features is None else features[_ENTRY_MARGIN]
        return self.warmup_entry_margin is None or margin is None or margin >= self.warmup_entry_margin

    @property
    def holding(self) -> bool:
        """True while would-be hits are escalated unserved after a detected traffic shift."""
        return self._hold_left > 0

    @property
    def hold_remaining(self) -> int:
        """Would-be hits still to be escalated unserved before serving resumes (0 when serving)."""
        return self._hold_left

    @property
    def claim_limit(self) -> int:
        """How many of the newest audit claims the claim check keeps (a start-up reads no more)."""
        return self.recent_window

    @property
    def label_limit(self) -> int | None:
        """How many of the newest labels the model is fitted on (a start-up reads no more)."""
        return self.max_labels

    def status(self) -> PolicyStatus:
        return PolicyStatus(
            max_false_hit_rate=self.max_false_hit_rate,
            estimated_false_hit_rate=self.bound,
            target=self.target,
            claim_ratio=self.claim_ratio,
            shifts_detected=len(self.shifts_detected),
            shift_hold_remaining=self.hold_remaining,
        )

    def resume_hold(self, audits: int) -> None:
        """Continue a hold that a restart interrupted: the next `audits` would-be hits are held.

        `MemCache` calls it at start-up with what its store says the last hold still owes, so
        a restart during a hold does not resume serving on the unchecked certificate. Capped at
        `shift_hold_audits`, and nothing is held with `detect_shifts=False`: restarting with
        other settings is how an operator ends a hold early. The controller also calls it when
        another instance's alarm starts a hold; a hold under way covers the change it saw, so
        the detector cools down as after an alarm of its own.
        """
        if audits < 0:
            raise ConfigError("audits is a number of audits and must be >= 0")
        if self.shift_detector is None:
            return
        with self._lock:
            self._hold_left = max(self._hold_left, min(int(audits), self.shift_hold_audits))
            if audits:
                self.shift_detector.quiet()

    def shift_counts(self, parts: int) -> list[tuple[int, int, int, int, int]] | None:
        """This instance's share of a shift test pooled over `parts` instances on one store
        (`ShiftDetector.counts`); None without a detector."""
        with self._lock:
            return None if self.shift_detector is None else self.shift_detector.counts(parts)

    def pooled_shift(self, shares: list[list[tuple[int, int, int, int, int]]]) -> bool:
        """Test the instances' `shift_counts` summed (this one's among them); an alarm starts a
        hold as an alarm of this instance's own detector does. True on an alarm."""
        with self._lock:
            if self.shift_detector is None or not self.shift_detector.pooled_alarm(shares):
                return False
            self._on_shift()
            return True

    def shorten_hold(self, audits: int) -> None:
        """Owe at most `audits` more would-be hits unserved: what the store says the instances on
        it still owe the hold together (their audits all count toward it, and their claims reach
        every instance's claim check)."""
        with self._lock:
            self._hold_left = min(self._hold_left, max(0, int(audits)))

    def _on_shift(self) -> None:
        """Check the new traffic before serving it: the next would-be hits are audits, unserved.

        The held audits are an unbiased sample of what would have been served to the new
        traffic, and they join the claims, so `claim_ratio` speaks about it when serving
        resumes. The older claims stay (they are evidence too, and stored ones come back after
        a restart): dropping them as well changed the realized rate within seed noise on
        CLINC150 (see docs/EVAL.md), and dropping them without a hold made it worse.
        """
        self.shifts_detected.append(self._lookups)
        self._hold_left = self.shift_hold_audits
        log.warning(
            "traffic shift detected at lookup %d: escalating the next %d would-be hits unserved to re-check the bound",
            self._lookups,
            self._hold_left,
        )

    # -- learning ---------------------------------------------------------------------------

    def observe(self, features: Sequence[float], correct: bool, *, key: int | None = None) -> None:
        """Learn from one paid answer. Call only for answers the strong model was paid for.

        `key` is the key the answer was stored under: a hindsight label of that key later
        takes this label's place.
        """
        if len(features) != len(FEATURE_NAMES):
            raise ConfigError(f"expected {len(FEATURE_NAMES)} features {FEATURE_NAMES}, got {len(features)}")
        with self._lock:
            self._arrival.append(features, bool(correct), key)
            self._observed += 1
        self._refit_if_due()

    def observe_audit(
        self, claimed_confidence: float, correct: bool, *, elsewhere: bool = False, scope_key: str | None = None
    ) -> None:
        """Record one audit: the confidence the hit was served with, and whether it was right.

        Takes effect at the next refit (the label of the same audit, passed to `observe`,
        usually triggers one). `elsewhere`: another instance on the store served and audited it
        (read at a sync). Its claim counts the same; it shortens a shift hold through the
        store's count of the hold's audits (`shorten_hold`), not here, where it would count twice;
        and it says that instance served at least 1 / `max_audit_rate` hits, which the warm-up
        counts: the bound is over every hit served from the store, and a restart resumes the
        warm-up the same way; with `scope_key`, that scope's too.
        """
        with self._lock:
            self._claims.append((float(claimed_confidence), bool(correct)))
            if elsewhere:
                self.warm_up.count_audit_elsewhere(scope_key)
            else:
                self._hold_left = max(0, self._hold_left - 1)

    def load_audit_claims(self, claims) -> None:
        """Add stored audits (claimed confidence, right) at start-up; the next fit uses them.

        They also say how far the warm-up got: at most `max_audit_rate` of served hits were
        audited, so at least audits / `max_audit_rate` hits were served (a restart resumes the
        warm-up from there, never past where it was)."""
        claims = [(float(c), bool(ok)) for c, ok in claims]
        with self._lock:
            self._claims.extend(claims)
            self.warm_up.resume(len(claims))

    def load_scope_audits(self, audits: Mapping[str, int]) -> None:
        """Stored audits per scope at start-up: each scope's warm-up resumes from there, as the
        pool's does from `load_audit_claims`. Whether a scope was first served after the pool's
        warm-up is not stored: one still short of `warmup_hits` resumes its own (the cautious
        side; with one scope the pool's warm-up is not over either)."""
        with self._lock:
            self.warm_up.resume_scopes(audits)

    @property
    def claim_ratio(self) -> float:
        """Audited wrong hits over the wrong hits the policy predicted when serving them, >= 1.

        Why: the labels come mostly from paid misses (queries that were not confident when they
        arrived), while served hits are queries that were. Audits are the one unbiased sample of
        served traffic: too few to certify the bound alone, but enough to say by how much the
        served claims fell short. The audited wrong hits count by their exact one-sided Poisson
        upper bound (`poisson_upper`, at `confidence_level`), so a lucky run of audits cannot
        hide a shortfall; both counts get two pseudo-errors, so the ratio is defined before the
        first audit: (3.0 + 2) / 2 = 2.5 at 95%. Until audits have seen a few wrong hits' worth of
        claims the ratio stays above 1, which is what keeps a young memory from serving on its
        model's word alone.
        """
        return certify.claim_ratio(self._claims, self.confidence_level)

    def set_hindsight(self, examples: Sequence[HindsightExample], entries: Mapping[int, EntryStats]) -> None:
        """Replace the hindsight labels (see `memcache.hindsight`) and refit.

        Each example's label takes the place of the arrival-time label of the same key, so a
        paid query is counted once, with the features it would have today.
        """
        hx, hy = [], []
        for example in examples:
            entry_id, _, features = neighbourhood_features(example.candidates, entries)
            hx.append(features)
            hy.append(entry_id == example.entry_id)
        with self._lock:
            self._hx, self._hy = hx, hy
            self._hkeys = np.array([e.key_id for e in examples], dtype=np.int64)
        self.refit()

    @property
    def labels(self) -> int:
        """Paid answers observed (each one label, whether taken on arrival or in hindsight),
        including those older than the `max_labels` kept."""
        return self._observed

    @property
    def hindsight_labels(self) -> int:
        return len(self._hy)

    @property
    def labels_in_use(self) -> int:
        """Labels the model is fitted on: arrival-time labels kept and not replaced, plus hindsight labels."""
        with self._lock:
            return len(self._training_set()[1])

    def _training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """(features, right) of the arrival-time labels not replaced by a hindsight label, then the hindsight labels."""
        x, y, keys = self._arrival.arrays()
        if not len(self._hkeys):
            return x, y
        kept = ~np.isin(keys, self._hkeys)
        hx = np.asarray(self._hx, dtype=float).reshape(-1, len(FEATURE_NAMES))
        return np.vstack([x[kept], hx]), np.concatenate([y[kept], np.asarray(self._hy, dtype=bool)])

    def _refit_if_due(self) -> None:
        """Refit when `certify.refit_due` says enough new labels came."""
        if not certify.refit_due(self._observed, self._fitted_at):
            return
        with self._fit_lock:
            if certify.refit_due(self._observed, self._fitted_at):  # another thread may have fitted meanwhile
                self._refit_locked()

    def refit(self) -> None:
        """Fit on a copy of the labels, then install the model and its cut-off.

        Why a copy: the fit takes O(labels) time (see `max_labels`), and `decide` must not wait
        for it; lookups keep the previous model until the new one is installed.
        """
        with self._fit_lock:
            self._refit_locked()

    def _refit_locked(self) -> None:
        with self._lock:
            self._fitted_at = self._observed
            features, labels = self._training_set()
            traffic = np.asarray(self._recent, dtype=float) if self._recent else None
            claim_ratio = self.claim_ratio
            warm = self._weights
        x = np.asarray(features, dtype=float).reshape(-1, len(FEATURE_NAMES))
        y = np.asarray(labels, dtype=float)
        fitted = certify.cross_fit(x, y, self.folds, lambda matrix, labels_: self._fit_weights(matrix, labels_, warm))
        if fitted is None:  # one class only (in some fold): nothing to rank or certify with yet
            with self._lock:
                self._weights = None
                self._set_cut_off(None)
            return
        p_traffic = (
            None
            if traffic is None
            else certify.sigmoid(certify.design(traffic, fitted.mean, fitted.scale) @ fitted.weights)
        )
        chosen = certify.choose_cut_off(
            fitted.held_out_logits,
            y,
            p_traffic,
            claim_ratio=claim_ratio,
            z=self._z,
            bound=self.max_false_hit_rate,
            target=self.target,
        )
        with self._lock:
            self._mean, self._scale, self._weights = fitted.mean, fitted.scale, fitted.weights
            self._set_cut_off(chosen)

    def _fit_weights(self, design: np.ndarray, y: np.ndarray, warm: np.ndarray | None) -> np.ndarray:
        return certify.fit_logistic(design, y, warm, self.l2)

    def _set_cut_off(self, chosen: certify.CutOff | None) -> None:
        if chosen is None:
            self.threshold = None
            self.region_labels = self.region_errors = 0
            self.estimated_false_hit_rate = self.bound = None
            return
        self.threshold, self.region_labels, self.region_errors = chosen.threshold, chosen.labels, chosen.errors
        self.bound = chosen.estimate
        self.estimated_false_hit_rate = self.region_errors / self.region_labels

    # -- calibration files ------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The settings, the labels in use, the audit claims and the current cut-off, as JSON data."""
        with self._lock:
            features, labels = self._training_set()
            claims = list(self._claims)
        settings = {name: getattr(self, name) for name in _SETTINGS}
        return {
            "kind": "memcache.CalibratedPolicy", "version": CALIBRATION_VERSION, **settings,
            "detect_shifts": self.shift_detector is not None, "feature_names": list(FEATURE_NAMES),
            "labels": [[*x, int(y)] for x, y in zip(features.tolist(), labels.tolist())],
            "audit_claims": [[claimed, int(right)] for claimed, right in claims],
            "threshold": self.threshold, "estimated_false_hit_rate": self.estimated_false_hit_rate,
            "bound": self.bound, "region_labels": self.region_labels,
        }  # fmt: skip

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_file(cls, path: str | Path, *, max_false_hit_rate: float | None = None, seed: int | None = None):
        """Load a calibration written by `save` / `memcache calibrate`; the bound may be overridden."""
        data = _read_calibration(path)
        settings = {name: data[name] for name in _SETTINGS if name in data}  # older files lack the newer settings
        if max_false_hit_rate is not None:
            settings["max_false_hit_rate"] = max_false_hit_rate
        policy = cls(**settings, seed=seed, detect_shifts=data.get("detect_shifts", True))
        policy.load_audit_claims((claimed, bool(right)) for claimed, right in data.get("audit_claims", []))
        policy.load_labels((row[:-1], bool(row[-1])) for row in data["labels"])
        return policy

    def load_labels(self, labels) -> None:
        """Add many labels at once (calibration files, labels kept in the store) and refit once.

        Labels with another number of features (kept by an older version) are skipped and
        logged: after an upgrade the policy relearns from new paid answers.
        """
        rows, skipped = [], 0
        for features, correct in labels:
            if len(features) != len(FEATURE_NAMES):
                skipped += 1
                continue
            rows.append((tuple(float(f) for f in features), bool(correct)))
        with self._lock:
            for features, correct in rows:
                self._arrival.append(features, correct, None)
            self._observed += len(rows)
            any_labels = len(self._arrival) > 0
        if any_labels:
            self.refit()
        if skipped:
            log.warning("skipped %d stored labels with another feature set (written by an older version)", skipped)

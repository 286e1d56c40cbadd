"""A label-free alarm for traffic that changes abruptly under the policy.

The policy's certificate is built from labels and audits of earlier traffic. When the mix of
questions changes at once (a new product, a new tenant, out-of-scope questions starting to
arrive), those labels describe traffic that is no longer there, and confidently wrong hits on
the new questions go unnoticed until enough audits of them come in: on CLINC150 with
out-of-scope questions arriving from query 3,000 on, the served false-hit rate after the change
went to 2.7-5.4% at a 2% bound. Such a change shows before any label does, in how far each
query is from the memory: the share of lookups whose nearest key is further away than for a
quarter of the lookups just before jumps (past 45% at the alarm; 25% when nothing changes),
while in stationary traffic it drifts down (the memory fills up).
"""

from __future__ import annotations

import math

import numpy as np

from memcache.errors import ConfigError


class ShiftDetector:
    """Alarms when recent lookups are much further from the memory than the reference traffic.

    Each lookup's top similarity goes in. The reference is the `reference` lookups before the
    last `recent` ones; the alarm fires when the share of recent lookups below the reference's
    `quantile` exceeds that quantile by `z` standard deviations (binomial, with the reference's
    own sampling noise). After an alarm it stays quiet for `cooldown` lookups, so one change
    raises one alarm. A short reference follows the slow drift of a filling memory; with 1,000
    lookups it lagged so far behind that a shift at query 1,500 of CLINC150 went unseen.
    `CalibratedPolicy` makes one with these defaults; set `policy.shift_detector` to change them.

    Measured in docs/EVAL.md: no alarm on stationary CLINC150 streams; with out-of-scope
    questions arriving from query 3,000 on, alarms 59-80 queries after the change.
    """

    def __init__(
        self,
        *,
        recent: int = 100,
        reference: int = 300,
        quantile: float = 0.25,
        z: float = 4.0,
        cooldown: int = 1000,
    ) -> None:
        if recent < 10 or reference < 10:
            raise ConfigError("recent and reference are numbers of lookups and must be >= 10")
        if not 0.0 < quantile < 1.0 or z <= 0:
            raise ConfigError("quantile must lie in (0, 1) and z must be > 0")
        self.recent = recent
        self.reference = reference
        self.quantile = quantile
        self.z = z
        self.cooldown = cooldown
        size = recent + reference
        self._window = np.zeros(2 * size)  # each value twice, so the last `size` are one slice
        self._seen = 0
        self._since_alarm = cooldown
        self._rank = int(quantile * (reference - 1))
        self._spread = math.sqrt(quantile * (1 - quantile) * (1 / recent + 1 / reference))

    def update(self, similarity: float) -> bool:
        """Add one lookup's top similarity; True when this lookup raises the alarm."""
        size = self.recent + self.reference
        slot = self._seen % size
        self._window[slot] = self._window[slot + size] = similarity
        self._seen += 1
        self._since_alarm += 1
        if self._seen < size or self._since_alarm < self.cooldown:
            return False
        values = self._window[slot + 1 : slot + 1 + size]  # oldest first
        cut = np.partition(values[: self.reference], self._rank)[self._rank]
        share = np.count_nonzero(values[self.reference :] < cut) / self.recent
        if (share - self.quantile) / self._spread <= self.z:
            return False
        self._since_alarm = 0
        return True

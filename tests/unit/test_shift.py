"""The label-free shift alarm on synthetic similarity streams (the real-stack test is in test_eval)."""

from __future__ import annotations

import numpy as np
import pytest

from memcache.errors import ConfigError
from memcache.shift import ShiftDetector


def alarms(detector, similarities):
    return [i for i, s in enumerate(similarities) if detector.update(s)]


def test_false_alarms_on_stationary_traffic_are_rare():
    """A false alarm costs one hold (270 would-be hits escalated); z=4 keeps it to ~1 per 100k lookups."""
    rng = np.random.default_rng(0)
    found = sum(len(alarms(ShiftDetector(), rng.normal(0.7, 0.1, 20_000))) for _ in range(5))
    assert found <= 3


def test_a_filling_memory_raises_no_alarm():
    """Lookups get closer to the memory as it grows: the share of far ones only falls."""
    rng = np.random.default_rng(1)
    trend = np.linspace(0.5, 0.85, 10_000)
    assert alarms(ShiftDetector(), trend + rng.normal(0, 0.1, 10_000)) == []


def test_an_abrupt_change_raises_one_alarm_soon_after_it():
    rng = np.random.default_rng(2)
    before = rng.normal(0.75, 0.08, 3000)
    after = np.where(rng.random(1500) < 0.4, rng.normal(0.5, 0.08, 1500), rng.normal(0.75, 0.08, 1500))
    found = alarms(ShiftDetector(), np.concatenate([before, after]))
    assert len(found) == 1 and 3000 < found[0] < 3100


def test_the_cooldown_lets_a_second_change_raise_a_second_alarm():
    rng = np.random.default_rng(3)
    parts = [rng.normal(0.8, 0.05, 2000), rng.normal(0.6, 0.05, 2000), rng.normal(0.4, 0.05, 2000)]
    found = alarms(ShiftDetector(), np.concatenate(parts))
    assert len(found) == 2 and 2000 < found[0] < 2100 and 4000 < found[1] < 4100


def test_a_gradual_change_is_seen_by_the_slow_scale():
    """Far lookups rising from none to half of the traffic over 3,000 lookups: the short window
    follows the change along without alarming; the (300, 900) scale sees it."""
    rng = np.random.default_rng(4)
    before = rng.normal(0.75, 0.08, 3000)
    after = np.where(
        rng.random(3000) < np.linspace(0, 0.5, 3000), rng.normal(0.5, 0.08, 3000), rng.normal(0.75, 0.08, 3000)
    )
    stream = np.concatenate([before, after])
    assert alarms(ShiftDetector(scales=((100, 300),)), stream) == []
    found = alarms(ShiftDetector(), stream)
    assert found and 3300 < found[0] < 5000  # and again after the cooldown while the change goes on


@pytest.mark.parametrize(
    "kwargs", [{"scales": ((5, 300),)}, {"scales": ((100, 0),)}, {"scales": ()}, {"quantile": 1.0}, {"z": 0}]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        ShiftDetector(**kwargs)


def dealt(similarities, instances: int, every: int = 1):
    """Deal a stream round-robin over `instances` detectors and run the pooled test every
    `every` lookups, as instances on one store do at each sync: where it first alarms."""
    detectors = [ShiftDetector() for _ in range(instances)]
    for i, s in enumerate(similarities):
        if detectors[i % instances].update(s):
            return i, "alone"
        if i % every == 0:
            shares = [d.counts(instances) for d in detectors]
            if any(d.pooled_alarm(shares) for d in detectors):
                return i, "pooled"
    return None, None


def test_one_instances_share_is_its_own_test():
    """Pooled over one instance, the test is the one `update` runs: same counts, same alarm."""
    rng = np.random.default_rng(2)
    stream = np.concatenate([rng.normal(0.75, 0.08, 3000), rng.normal(0.55, 0.08, 200)])
    alone, pooled = ShiftDetector(), ShiftDetector()
    first_alone = first_pooled = None
    for i, s in enumerate(stream):
        if alone.update(s) and first_alone is None:
            first_alone = i
        pooled._since_alarm = -(10**9)  # only the pooled test may alarm
        pooled.update(s)
        pooled._since_alarm = pooled.cooldown
        if first_pooled is None and pooled.pooled_alarm([pooled.counts(1)]):
            first_pooled = i
    assert first_alone is not None and first_alone == first_pooled


def test_instances_that_share_the_traffic_see_a_change_as_one_would():
    """Four instances, each a quarter of the traffic: alone each sees an abrupt change only after
    about four times the lookups one instance needs; pooled, about as soon as one instance."""
    rng = np.random.default_rng(2)
    before = rng.normal(0.75, 0.08, 3000)
    after = np.where(rng.random(1500) < 0.4, rng.normal(0.5, 0.08, 1500), rng.normal(0.75, 0.08, 1500))
    stream = np.concatenate([before, after])
    one = alarms(ShiftDetector(), stream)[0]
    apart = min(i for i in (alarms(ShiftDetector(), stream[k::4]) for k in range(4)) for i in i) * 4
    pooled, how = dealt(stream, 4)
    assert how == "pooled" and 3000 < pooled <= one + 60 < apart


def test_pooling_raises_no_alarm_on_stationary_traffic():
    rng = np.random.default_rng(5)
    assert dealt(rng.normal(0.7, 0.1, 20_000), 4, every=10) == (None, None)


def test_a_share_counts_only_toward_the_scale_it_was_taken_at():
    """Instances with other scales (another version's, or other settings) add nothing to a test."""
    rng = np.random.default_rng(2)
    mine = ShiftDetector()
    for s in rng.normal(0.75, 0.08, 3000):
        mine.update(s)
    far = [(50, 50, 150, 50, 150)]  # all of its recent lookups below its cut, at a scale this one lacks
    assert not mine.pooled_alarm([mine.counts(2), far])
    assert mine.pooled_alarm([mine.counts(2), [(50, 50, 150, 100, 300)]])  # the same, at this one's


def test_the_cooldown_counts_the_lookups_of_every_instance_it_pools_with():
    """After an alarm, an instance that shares the traffic with three others is quiet for a
    quarter of `cooldown` of its own lookups: `cooldown` lookups in all, as one instance would be."""
    rng = np.random.default_rng(2)
    alone, pooled = ShiftDetector(cooldown=1000), ShiftDetector(cooldown=1000)
    for s in rng.normal(0.75, 0.08, 1500):
        alone.update(s)
        pooled.update(s)
    pooled.counts(4)
    alone.quiet()
    pooled.quiet()
    quiet_alone = next(i for i in range(2000) if alone.update(0.75) is False and alone._since_alarm >= alone.cooldown)
    quiet_pooled = next(
        i for i in range(2000) if pooled.update(0.75) is False and pooled._since_alarm >= pooled.cooldown
    )
    assert (quiet_alone, quiet_pooled) == (999, 249)

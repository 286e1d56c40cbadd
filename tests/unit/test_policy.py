import json

import numpy as np
import pytest

from memcache import certify
from memcache.certify import poisson_upper
from memcache.errors import ConfigError
from memcache.policy import FEATURE_NAMES, CalibratedPolicy, ThresholdPolicy, neighbourhood_features
from memcache.shift import ShiftDetector
from memcache.types import Candidate, HindsightExample


def synthetic_labels(n, seed=0):
    """Labels whose chance of being right rises with similarity, as in real caches."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.uniform(0.4, 1.0)
        p_right = 1 / (1 + np.exp(-(s - 0.75) * 40))
        margin = rng.uniform(0, 0.3)
        features = (
            s,
            s - margin,
            rng.uniform(0.5, 1),
            rng.uniform(0.1, 1),
            0.0,
            s - 0.2,
            s - 0.05,
            s - 0.02,
            margin,
            rng.uniform(-0.2, 0.05),
        )
        out.append((features, rng.random() < p_right))
    return out


def test_no_hits_before_any_label():
    policy = CalibratedPolicy(0.02, seed=0)
    decision = policy.decide([Candidate(1, 1, 0.99)], {})
    assert decision.action == "miss" and decision.confidence == 0.0


def test_the_chosen_region_holds_the_bound_on_fresh_data():
    policy = CalibratedPolicy(0.02, seed=0)
    policy.load_labels(synthetic_labels(3000))
    assert policy.threshold is not None and policy.bound <= 0.02
    fresh = synthetic_labels(20000, seed=1)
    served = [ok for features, ok in fresh if policy.confidence(features) >= policy.threshold]
    assert len(served) > 1000
    assert 1 - np.mean(served) <= 0.02


def test_a_scope_with_fewer_questions_than_a_certificate_needs_labels_is_served_no_hit():
    policy = CalibratedPolicy(0.02, seed=0)
    policy.load_labels(synthetic_labels(3000))
    near = [Candidate(1, 1, 0.95), Candidate(2, 1, 0.93)] + [
        Candidate(3 + i, 2 + i, 0.75 - 0.001 * i) for i in range(8)
    ]
    assert policy.min_scope_size == 133  # z^2 (1 - b) / b at 95% and 2%: the fewest labels of a cut-off
    assert (CalibratedPolicy(0.01).min_scope_size, CalibratedPolicy(0.05).min_scope_size) == (268, 52)
    assert policy.decide(near, {}).action != "miss"  # a would-be hit, and served where no scope size is told
    young = policy.decide(near, {}, scope_size=132)
    assert young.action == "miss" and young.confidence >= policy.threshold  # paid for, and so a label
    assert policy.decide(near, {}, scope_size=133).action != "miss"


def test_a_bound_that_the_data_cannot_meet_serves_nothing():
    rng = np.random.default_rng(0)
    coin = [((s, 0.1, 1.0, 1.0, 0.0, s - 0.1, s), rng.random() < 0.7) for s in rng.uniform(0.8, 1.0, 2000)]
    policy = CalibratedPolicy(0.02)
    policy.load_labels(coin)
    assert policy.threshold is None


def test_calibration_file_round_trip(tmp_path):
    policy = CalibratedPolicy(0.05, seed=0)
    policy.load_audit_claims([(0.99, True)] * 50 + [(0.99, False)] * 3)
    policy.load_labels(synthetic_labels(1500))
    path = tmp_path / "calibration.json"
    policy.save(path)
    loaded = CalibratedPolicy.from_file(path)
    assert loaded.threshold == pytest.approx(policy.threshold)
    assert loaded.claim_ratio == pytest.approx(policy.claim_ratio) and loaded.claim_ratio > 1
    assert loaded.labels == policy.labels and loaded.max_false_hit_rate == 0.05
    features = (0.9, 0.3, 0.9, 0.5, 0.0, 0.7, 0.85, 0.88, 0.3, -0.05)
    assert loaded.confidence(features) == pytest.approx(policy.confidence(features))
    assert CalibratedPolicy.from_file(path, max_false_hit_rate=0.01).max_false_hit_rate == 0.01


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ConfigError):
        CalibratedPolicy.from_file(path)
    with pytest.raises(ConfigError):
        CalibratedPolicy.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize("bound", [0, 1, -0.1, 1.5])
def test_bound_must_be_a_rate(bound):
    with pytest.raises(ConfigError):
        CalibratedPolicy(bound)


def test_features_see_agreement_among_neighbours():
    agree = neighbourhood_features([Candidate(1, 7, 0.9), Candidate(2, 7, 0.88), Candidate(3, 8, 0.7)], {})
    split = neighbourhood_features([Candidate(1, 7, 0.9), Candidate(2, 8, 0.89), Candidate(3, 8, 0.88)], {})
    assert agree[0] == 7 and agree[2][2] > split[2][2]  # agreement
    assert agree[2][1] > split[2][1]  # margin to another answer


def test_threshold_policy_serves_at_its_threshold():
    policy = ThresholdPolicy(0.8)
    assert policy.decide([Candidate(1, 1, 0.81)], {}).action == "hit"
    assert policy.decide([Candidate(1, 1, 0.79)], {}).action == "miss"
    with pytest.raises(ConfigError):
        ThresholdPolicy(1.5)


def test_a_hindsight_label_replaces_the_arrival_label_of_the_same_key():
    """Each paid query counts once: its fresh hindsight label takes its arrival label's place."""
    policy = CalibratedPolicy(0.05, seed=0)
    labels = synthetic_labels(300)
    for key, (features, correct) in enumerate(labels):
        policy.observe(features, correct, key=key)
    assert policy.labels == policy.labels_in_use == 300
    near = (Candidate(1000, 5, 0.95), Candidate(1001, 5, 0.93), Candidate(1002, 6, 0.6))
    examples = [HindsightExample(key, 5 if key % 2 else 6, near) for key in range(100)]
    policy.set_hindsight(examples, {})
    assert policy.hindsight_labels == 100 and policy.labels_in_use == 300  # 100 replaced, not added
    features, correct = policy._training_set()
    assert sum(correct[-100:]) == 50  # right exactly when the nearest entry (5) is the key's own entry
    policy.set_hindsight(examples[:10], {})  # a newer window replaces the older one whole
    assert policy.hindsight_labels == 10 and policy.labels_in_use == 300


def test_labels_of_an_older_feature_set_are_skipped(caplog):
    policy = CalibratedPolicy(0.05, seed=0)
    policy.load_labels([((0.9, 0.1, 1.0, 1.0, 0.0), True)] * 5 + synthetic_labels(50))
    assert policy.labels == 50
    assert "skipped 5 stored labels" in caplog.text


def test_a_calibration_file_of_another_version_asks_for_recalibration(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"kind": "memcache.CalibratedPolicy", "version": 1, "feature_names": ["similarity"]}))
    with pytest.raises(ConfigError, match="memcache calibrate"):
        CalibratedPolicy.from_file(path)


def test_features_see_how_crowded_the_neighbourhood_is():
    _, _, crowded = neighbourhood_features([Candidate(1, 7, 0.9), Candidate(2, 8, 0.89), Candidate(3, 9, 0.88)], {})
    _, _, sparse = neighbourhood_features([Candidate(1, 7, 0.9), Candidate(2, 8, 0.5), Candidate(3, 9, 0.3)], {})
    assert crowded[5:7] == (0.88, 0.89) and sparse[5:7] == (0.3, 0.5)
    assert neighbourhood_features([Candidate(1, 7, 0.9)], {})[2][5:7] == (0.0, 0.0)


def test_entry_centroid_features_fall_back_to_the_key_for_one_key_entries():
    """Entry similarity and gap are the centroid's where the cache set them; for a one-key
    entry, the key's own similarity and that similarity minus 1 (its keys as if identical)."""
    _, _, plain = neighbourhood_features([Candidate(1, 7, 0.9), Candidate(2, 8, 0.8)], {})
    assert plain[7:] == pytest.approx((0.9, 0.1, -0.1))
    _, _, centred = neighbourhood_features(
        [Candidate(1, 7, 0.9, 0.95, -0.02), Candidate(2, 8, 0.8), Candidate(3, 7, 0.7, 0.95, -0.02)], {}
    )
    assert centred[7:] == pytest.approx((0.95, 0.15, -0.02))
    assert neighbourhood_features([Candidate(1, 7, 0.9)], {})[2][7:] == pytest.approx((0.9, 0.9, -0.1))


HONEST_AUDITS = [(0.9, True)] * 470 + [(0.9, False)] * 30  # 50 wrong claimed, 30 found


def test_audits_that_find_more_wrong_hits_than_claimed_tighten_the_cut_off():
    """The claim ratio scales the estimate: the same labels certify less once audits disagree."""
    honest = CalibratedPolicy(0.05, seed=0)
    honest.load_audit_claims(HONEST_AUDITS)
    honest.load_labels(synthetic_labels(1500))
    audited = CalibratedPolicy(0.05, seed=0)
    audited.load_audit_claims([(0.9, True)] * 300 + [(0.9, False)] * 200)  # 200 wrong where 50 were claimed
    audited.load_labels(synthetic_labels(1500))
    assert honest.claim_ratio == 1.0
    assert audited.claim_ratio == pytest.approx((poisson_upper(200, 0.95) + 2) / (50 + 2))
    assert audited.threshold > honest.threshold and audited.bound <= 0.05


def test_the_claim_ratio_never_falls_under_one():
    policy = CalibratedPolicy(0.05, seed=0)
    policy.load_audit_claims([(0.9, True)] * 500)  # 50 wrong predicted, none found
    policy.load_labels(synthetic_labels(1500))
    honest = CalibratedPolicy(0.05, seed=0)
    honest.load_audit_claims(HONEST_AUDITS)
    honest.load_labels(synthetic_labels(1500))
    assert policy.claim_ratio == 1.0 and policy.threshold == pytest.approx(honest.threshold)


def test_before_any_audit_the_claims_are_taken_at_the_worst_a_zero_count_allows():
    """Before any audit, the served claims are taken as 2.5 times too optimistic: (3.0 + 2) / 2 at 95%."""
    policy = CalibratedPolicy(0.05, seed=0)
    assert policy.claim_ratio == pytest.approx((poisson_upper(0, 0.95) + 2) / 2) and poisson_upper(
        0, 0.95
    ) == pytest.approx(2.9957, abs=1e-3)


def test_poisson_upper_bound_matches_garwood():
    # chi2.ppf(0.95, 2k + 2) / 2 for k = 1, 10, 100
    assert [round(poisson_upper(k, 0.95), 2) for k in (1, 10, 100)] == [4.74, 16.96, 118.08]


def test_the_label_checks_bound_is_the_exact_poisson_bound_within_about_one_percent():
    for level in (0.9, 0.95, 0.99):
        counts = np.arange(0, 301)
        fast = certify.poisson_upper_wh(counts, certify.z_for(level))
        exact = np.array([poisson_upper(int(k), level) for k in counts])
        assert np.all(np.abs(fast / exact - 1) < 0.011)


def would_be_hit(policy):
    """Candidates whose confidence clears the fitted cut-off (a lookup the policy would serve)."""
    for s in np.linspace(0.99, 0.8, 40):
        candidates = [Candidate(1, 1, s), Candidate(2, 1, s - 0.01), Candidate(3, 2, s - 0.25)]
        _, _, features = neighbourhood_features(candidates, {})
        if policy.confidence(features) >= policy.threshold:
            return candidates
    raise AssertionError("no would-be hit found")


def test_a_detected_shift_holds_would_be_hits_until_audited():
    policy = CalibratedPolicy(0.05, seed=0, shift_hold_audits=3, min_audit_rate=0.0, max_audit_rate=0.0)
    policy.shift_detector = ShiftDetector(scales=((10, 20),), cooldown=10_000)
    policy.load_audit_claims([(0.99, True)] * 100)
    policy.load_labels(synthetic_labels(1500))
    hit = would_be_hit(policy)
    for _ in range(40):  # close traffic: served as usual
        assert policy.decide(hit, {}).action == "hit"
    far = [Candidate(9, 9, 0.2)]  # then traffic far from the memory
    for _ in range(20):
        if policy.shifts_detected:
            break
        assert policy.decide(far, {}).action == "miss"
    assert len(policy.shifts_detected) == 1 and policy.shifts_detected[0] > 40
    assert policy.holding and len(policy._claims) == 100  # earlier claims are kept
    for _ in range(3):
        decision = policy.decide(hit, {})
        assert decision.action == "audit" and decision.held
        policy.observe_audit(decision.confidence, True)
    assert not policy.holding
    assert policy.decide(hit, {}).action == "hit"


def test_shift_settings_survive_the_calibration_file(tmp_path):
    policy = CalibratedPolicy(0.05, seed=0, detect_shifts=False, shift_hold_audits=50)
    policy.load_labels(synthetic_labels(500))
    policy.save(tmp_path / "c.json")
    loaded = CalibratedPolicy.from_file(tmp_path / "c.json")
    assert loaded.shift_detector is None and loaded.shift_hold_audits == 50
    assert CalibratedPolicy(0.05).shift_detector is not None
    with pytest.raises(ConfigError):
        CalibratedPolicy(0.05, shift_hold_audits=-1)


def test_a_resumed_hold_holds_would_be_hits_until_audited():
    policy = CalibratedPolicy(0.05, seed=0, min_audit_rate=0.0, max_audit_rate=0.0)
    policy.load_audit_claims([(0.99, True)] * 100)
    policy.load_labels(synthetic_labels(1500))
    hit = would_be_hit(policy)
    policy.resume_hold(2)
    assert policy.holding and policy.shifts_detected == []
    for _ in range(2):
        decision = policy.decide(hit, {})
        assert decision.action == "audit" and decision.held
        policy.observe_audit(decision.confidence, True)
    assert policy.decide(hit, {}).action == "hit"
    with pytest.raises(ConfigError):
        policy.resume_hold(-1)
    capped = CalibratedPolicy(0.05, shift_hold_audits=5)
    capped.resume_hold(270)
    assert capped.hold_remaining == 5
    off = CalibratedPolicy(0.05, detect_shifts=False)
    off.resume_hold(270)
    assert not off.holding


def test_max_labels_keeps_the_newest_labels_and_counts_them_all():
    labels = synthetic_labels(300)
    policy = CalibratedPolicy(0.05, seed=0, max_labels=100)
    for features, correct in labels:
        policy.observe(features, correct)
    assert policy.labels == 300 and policy.labels_in_use == 100
    kept = [tuple(row[:-1]) for row in policy.to_dict()["labels"]]
    assert kept == [tuple(float(f) for f in features) for features, _ in labels[-100:]]
    assert CalibratedPolicy(0.05, max_labels=None).max_labels is None
    with pytest.raises(ConfigError):
        CalibratedPolicy(0.05, max_labels=0)


def test_max_labels_survives_the_calibration_file(tmp_path):
    policy = CalibratedPolicy(0.05, seed=0, max_labels=1200)
    policy.load_labels(synthetic_labels(1500))
    assert policy.labels == 1500 and policy.labels_in_use == 1200
    policy.save(tmp_path / "calibration.json")
    loaded = CalibratedPolicy.from_file(tmp_path / "calibration.json")
    assert loaded.max_labels == 1200 and loaded.labels_in_use == 1200


def test_decide_does_not_wait_for_a_refit(monkeypatch):
    """A lookup during a refit is answered by the model already installed."""
    import threading

    policy = CalibratedPolicy(0.05, seed=0)
    policy.load_labels(synthetic_labels(2000))
    features = synthetic_labels(1, seed=5)[0][0]
    before = policy.confidence(features)
    fitting, release = threading.Event(), threading.Event()
    fit_weights = policy._fit_weights

    def held_fit(*args):
        fitting.set()
        assert release.wait(30), "the test did not release the fit"
        return fit_weights(*args)

    monkeypatch.setattr(policy, "_fit_weights", held_fit)
    worker = threading.Thread(target=policy.observe, args=(features, False))  # a label, then a refit? not yet due
    worker.start()
    worker.join(30)
    assert not fitting.is_set()  # one label is not 10% more: no refit
    worker = threading.Thread(target=policy.refit)
    worker.start()
    try:
        assert fitting.wait(30)
        decided = []
        probe = threading.Thread(target=lambda: decided.append(policy.decide([Candidate(1, 1, 0.97)], {})))
        probe.start()
        probe.join(10)
        assert decided, "decide waited for the refit"
        assert policy.confidence(features) == before  # the installed model answered
    finally:
        release.set()
        worker.join(30)
    assert not worker.is_alive() and policy.threshold is not None


def test_label_buffer_keeps_order_when_it_wraps_and_when_it_grows():
    from memcache.policy import LabelBuffer

    ring = LabelBuffer(2, capacity=3)
    for i in range(5):
        ring.append((i, -i), i % 2 == 0, None if i == 3 else 100 + i)
    x, y, keys = ring.arrays()
    assert len(ring) == 3 and x.tolist() == [[2, -2], [3, -3], [4, -4]]
    assert y.tolist() == [True, False, True] and keys.tolist() == [102, -1, 104]
    growing = LabelBuffer(1, capacity=None)
    for i in range(3000):
        growing.append((i,), True, i + 1)
    x, _, keys = growing.arrays()
    assert len(growing) == 3000 and x[:, 0].tolist() == list(range(3000)) and keys[-1] == 3000


def test_concurrent_observe_decide_and_refit_lose_no_label():
    """Threads learning, deciding and refitting at once: no deadlock, every label counted."""
    import threading

    policy = CalibratedPolicy(0.05, seed=0, max_labels=1500)
    labels = synthetic_labels(2000, seed=7)
    errors = []

    def run(fn):
        try:
            fn()
        except Exception as exc:  # the test reports whatever a thread raised
            errors.append(exc)

    def learn(part):
        for features, correct in part:
            policy.observe(features, correct)

    def decide():
        for _ in range(500):
            policy.decide([Candidate(1, 1, 0.97), Candidate(2, 2, 0.9)], {})
            policy.confidence(labels[0][0])

    def refit():
        for _ in range(5):
            policy.refit()

    threads = [
        threading.Thread(target=run, args=(fn,))
        for fn in (lambda: learn(labels[:1000]), lambda: learn(labels[1000:]), decide, refit)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and not errors
    assert policy.labels == 2000 and policy.labels_in_use == 1500
    assert policy.threshold is not None


def _hits_by_confidence(policy, share=0.5):
    """(a sure would-be hit, a marginal one): both clear the cut-off, only the first has an
    estimated error within `share` of the bound (the default `warmup_hit_share`)."""
    floor = share * policy.max_false_hit_rate
    sure = marginal = None
    for s in np.linspace(0.99, 0.7, 120):
        candidates = [Candidate(1, 1, s), Candidate(2, 1, s - 0.01), Candidate(3, 2, s - 0.25)]
        confidence = policy.confidence(neighbourhood_features(candidates, {})[2])
        if confidence >= policy.threshold:
            if 1 - confidence <= floor:
                sure = sure or candidates
            else:
                marginal = marginal or candidates
    assert sure and marginal, "the fixture needs hits on both sides of the floor"
    return sure, marginal


def test_during_the_warm_up_each_hit_must_be_sure_on_its_own():
    policy = CalibratedPolicy(0.05, seed=0, min_audit_rate=0.0, max_audit_rate=0.0, detect_shifts=False, warmup_hits=5)
    policy.load_audit_claims([(0.99, True)] * 100)
    policy.load_labels(synthetic_labels(3000))
    sure, marginal = _hits_by_confidence(policy)
    decision = policy.decide(marginal, {})
    assert decision.action == "miss" and decision.confidence >= policy.threshold  # above the cut-off, paid for
    for _ in range(5):  # the warm-up's five hits, each sure on its own
        assert policy.decide(sure, {}).action == "hit"
    assert policy.decide(marginal, {}).action == "hit"  # after the warm-up the cut-off alone decides


def test_a_scope_first_served_after_the_pools_warm_up_has_a_warm_up_of_its_own():
    policy = CalibratedPolicy(0.05, seed=0, min_audit_rate=0.0, max_audit_rate=0.0, detect_shifts=False, warmup_hits=5)
    policy.load_audit_claims([(0.99, True)] * 100)
    policy.load_labels(synthetic_labels(3000))
    sure, marginal = _hits_by_confidence(policy)
    for scope in ("incumbent",) * 4 + ("early",):  # the pool's warm-up, served in two scopes
        assert policy.decide(sure, {}, scope_key=scope).action == "hit"
    assert policy.decide(marginal, {}, scope_key="incumbent").action == "hit"  # the cut-off alone decides
    assert policy.decide(marginal, {}, scope_key="early").action == "hit"  # it grew up with the model
    assert policy.decide(marginal, {}).action == "hit"  # a lookup of no known scope: the pool's warm-up alone
    newcomer = policy.decide(marginal, {}, scope_key="newcomer")
    assert newcomer.action == "miss" and newcomer.confidence >= policy.threshold  # its own first hits: sure ones
    for _ in range(5):
        assert policy.decide(sure, {}, scope_key="newcomer").action == "hit"
    assert policy.decide(marginal, {}, scope_key="newcomer").action == "hit"
    assert policy.scope_served("newcomer") == 6 and policy.served == 14
    assert policy.decide(sure, {}, scope_size=1, scope_key="chat").action == "miss"  # a young scope (a conversation)
    assert "chat" not in policy.warm_up.late_scopes  # ... leaves nothing behind: per-scope state only for grown scopes


def test_a_scopes_warm_up_resumes_from_its_stored_audits_and_counts_other_instances_audits():
    policy = CalibratedPolicy(0.05, seed=0, detect_shifts=False, warmup_hits=10, max_audit_rate=0.2)
    policy.load_audit_claims([(0.99, True)] * 2)  # the pool: at least 10 hits served, its warm-up over
    policy.load_scope_audits({"grown": 2, "resumed": 1})  # at least 10 and 5 hits served there
    assert policy.scope_served("grown") == 10 and policy.scope_served("other") == 0
    policy.observe_audit(0.99, True, elsewhere=True, scope_key="other")  # another instance served >= 5 there
    policy.observe_audit(0.99, True, elsewhere=True)  # ... and one of no known scope: the pool's count only
    assert policy.scope_served("other") == 5 and policy.served == 20
    close = [0.0] * len(FEATURE_NAMES)  # no margin: only a scope past its own warm-up, or without one, serves it
    assert policy.serves_now(1.0, close, scope_key="grown")
    assert not policy.serves_now(1.0, close, scope_key="resumed")  # short of it at a restart: resumed
    assert not policy.serves_now(1.0, close, scope_key="other")  # first served elsewhere after the pool's


def test_without_the_per_hit_floor_the_cut_off_alone_decides_from_the_first_hit():
    policy = CalibratedPolicy(
        0.05, seed=0, min_audit_rate=0.0, max_audit_rate=0.0, detect_shifts=False, warmup_hit_share=None
    )
    policy.load_audit_claims([(0.99, True)] * 100)
    policy.load_labels(synthetic_labels(3000))
    _, marginal = _hits_by_confidence(policy)  # held back under the default floor, as above
    assert policy.decide(marginal, {}).action == "hit"


def test_during_the_warm_up_each_hit_must_lead_the_next_answer():
    policy = CalibratedPolicy(0.05, seed=0, warmup_hits=2)
    sure = 1.0  # no estimated error: only the margin floor can refuse
    at = FEATURE_NAMES.index("entry_margin")
    close, clear = [0.0] * 10, [0.0] * 10
    close[at], clear[at] = policy.warmup_entry_margin / 2, policy.warmup_entry_margin
    assert not policy.serves_now(sure, close) and policy.serves_now(sure, clear)
    assert policy.serves_now(sure)  # without features only the confidence floor applies
    policy.load_audit_claims([(0.99, True)])  # an audit: at least 5 hits were served, the warm-up is over
    assert policy.serves_now(sure, close)
    assert CalibratedPolicy(0.05, warmup_entry_margin=None).serves_now(sure, close)


@pytest.mark.parametrize("margin", [-0.01, 1.5, float("nan"), True, "0.02"])
def test_the_margin_floor_is_a_difference_of_similarities(margin):
    with pytest.raises(ConfigError, match="warmup_entry_margin"):
        CalibratedPolicy(0.02, warmup_entry_margin=margin)


def test_the_margin_floor_survives_the_calibration_file(tmp_path):
    for margin in (0.05, None):
        policy = CalibratedPolicy(0.05, seed=0, warmup_entry_margin=margin)
        policy.load_labels(synthetic_labels(500))
        policy.save(tmp_path / "c.json")
        assert CalibratedPolicy.from_file(tmp_path / "c.json").warmup_entry_margin == margin
    data = json.loads((tmp_path / "c.json").read_text())
    del data["warmup_entry_margin"]  # a file written before the floor existed gets the default
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert CalibratedPolicy.from_file(tmp_path / "old.json").warmup_entry_margin == 0.02


@pytest.mark.parametrize("share", [0, -0.1, 1.5, float("nan"), True])
def test_the_per_hit_floor_is_a_share_of_the_bound(share):
    with pytest.raises(ConfigError, match="warmup_hit_share"):
        CalibratedPolicy(0.02, warmup_hit_share=share)


def test_the_per_hit_floor_survives_the_calibration_file(tmp_path):
    policy = CalibratedPolicy(0.05, seed=0, warmup_hit_share=0.3)
    policy.load_labels(synthetic_labels(500))
    policy.save(tmp_path / "c.json")
    assert CalibratedPolicy.from_file(tmp_path / "c.json").warmup_hit_share == 0.3
    policy = CalibratedPolicy(0.05, seed=0, warmup_hit_share=None)
    policy.save(tmp_path / "none.json")
    assert CalibratedPolicy.from_file(tmp_path / "none.json").warmup_hit_share is None

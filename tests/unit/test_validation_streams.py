"""The validation protocol's streams: what each family replays, and that no stream of one family
touches the other's domains (a stream tuned on is never reported as validation)."""

from memcache.eval.data import OOS, load_intents
from memcache.eval.validation import FAMILIES, out_of_scope_half, streams_of


def test_short_streams_are_one_domain_or_three_and_never_cross_families():
    for family, domains in FAMILIES.items():
        streams = streams_of(family)
        assert len(streams) == 20 and all(set(s.domains) <= set(domains) for s in streams)
        assert sorted({len(s.domains) for s in streams}) == [1, 3]


def test_longer_streams_are_train_rows_of_three_domains_and_of_all_five():
    streams = streams_of("validation", longer=True)
    assert [(len(s.domains), s.limit) for s in streams] == [(3, 1500)] * 10 + [(5, 4000)]
    assert all(s.splits == ("train",) and set(s.domains) <= set(FAMILIES["validation"]) for s in streams)
    assert len({s.name for s in streams}) == len(streams)


def test_drift_streams_take_each_familys_own_half_of_the_out_of_scope_rows(data_dir):
    data = str(data_dir / "clinc150.jsonl")
    halves = {family: out_of_scope_half(data, family) for family in FAMILIES}
    assert [len(h) for h in halves.values()] == [600, 600] and all(q.label == OOS for h in halves.values() for q in h)
    tuning, validation = ({(q.text, q.split) for q in h} for h in halves.values())
    assert not tuning & validation  # no out-of-scope row is tuned on and reported
    assert len(tuning | validation) == len(load_intents(data, None, {"domain": {OOS}}))
    for family, domains in FAMILIES.items():
        abrupt, rising = streams_of(family, drift=True)
        assert (abrupt.oos_from, abrupt.oos_ramp, rising.oos_from, rising.oos_ramp) == (2000, False, 1000, True)
        assert abrupt.domains == rising.domains == domains and abrupt.splits == ("test", "val")

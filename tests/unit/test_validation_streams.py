"""The validation protocol's streams: what each family replays, and that no stream of one family
touches the other's domains (a stream tuned on is never reported as validation)."""

from memcache.eval.data import OOS, LabeledQuery, load_intents
from memcache.eval.validation import (
    FAMILIES,
    INCUMBENT,
    INCUMBENT_HEAD,
    NEWCOMER,
    newcomer_order,
    out_of_scope_half,
    streams_of,
)


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


def test_a_newcomer_is_each_domain_of_the_family_beside_the_other_four():
    for family, domains in FAMILIES.items():
        streams = streams_of(family, newcomer=True)
        assert [s.domains for s in streams] == [(d,) for d in domains]
        assert all(set(s.incumbent) == set(domains) - set(s.domains) for s in streams)
        assert all(s.splits == ("test", "val") for s in streams)


def test_the_newcomer_arrives_after_the_incumbents_head_and_shares_the_tail_with_it():
    incumbent = [LabeledQuery(f"i{n}", "a") for n in range(INCUMBENT_HEAD + 1000)]
    newcomer = [LabeledQuery(f"n{n}", "b") for n in range(750)]
    order = newcomer_order(newcomer, incumbent, seed=3)
    assert len(order) == INCUMBENT_HEAD + 1500 and len({q.text for q in order}) == len(order)
    assert {q.tenant for q in order[:INCUMBENT_HEAD]} == {INCUMBENT}
    tail = order[INCUMBENT_HEAD:]
    assert sum(q.tenant == NEWCOMER for q in tail) == 750 == sum(q.tenant == INCUMBENT for q in tail)
    assert all(q.text.startswith("n") == (q.tenant == NEWCOMER) for q in order)
    assert order == newcomer_order(newcomer, incumbent, seed=3)  # a seed replays the same stream

"""The validation protocol's streams: what each family replays, and that no stream of one family
touches the other's domains (a stream tuned on is never reported as validation)."""

from memcache.eval.validation import FAMILIES, streams_of


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

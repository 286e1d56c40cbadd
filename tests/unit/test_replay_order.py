import pytest

from memcache.errors import ConfigError
from memcache.eval.data import OOS, LabeledQuery
from memcache.eval.replay import shuffled

QUERIES = [LabeledQuery(f"q{i}", OOS if i % 4 == 0 else f"intent{i % 7}") for i in range(200)]


def test_the_same_seed_gives_the_same_order_and_another_seed_another():
    assert shuffled(QUERIES, 3) == shuffled(QUERIES, 3) != shuffled(QUERIES, 4)
    assert sorted(q.text for q in shuffled(QUERIES, 3)) == sorted(q.text for q in QUERIES)


def test_out_of_scope_queries_arrive_only_from_oos_from_on():
    order = shuffled(QUERIES, 0, oos_from=100)
    assert sorted(q.text for q in order) == sorted(q.text for q in QUERIES)  # nothing lost, nothing twice
    assert all(q.label != OOS for q in order[:100])
    tail = order[100:]
    assert sum(q.label == OOS for q in tail) == 50
    assert any(q.label == OOS for q in tail[:25]) and any(q.label != OOS for q in tail[-25:])  # mixed, not appended


def test_oos_from_past_the_in_scope_queries_puts_every_out_of_scope_query_last():
    order = shuffled(QUERIES, 0, oos_from=10_000)
    assert [q.label == OOS for q in order] == [False] * 150 + [True] * 50


def test_a_ramp_raises_the_out_of_scope_share_gradually_from_oos_from_on():
    many = [LabeledQuery(f"q{i}", OOS if i % 4 == 0 else f"intent{i % 7}") for i in range(4000)]
    order = shuffled(many, 0, oos_from=1000, oos_ramp=True)
    assert order == shuffled(many, 0, oos_from=1000, oos_ramp=True)
    assert sorted(q.text for q in order) == sorted(q.text for q in many)
    assert all(q.label != OOS for q in order[:1000])
    thirds = [order[1000 + i * 1000 : 2000 + i * 1000] for i in range(3)]
    shares = [sum(q.label == OOS for q in part) / len(part) for part in thirds]
    assert 0.02 < shares[0] < shares[1] < shares[2]  # rising, not a jump
    assert shares[2] / shares[0] > 2


def test_a_negative_position_or_a_ramp_without_a_start_is_refused():
    with pytest.raises(ConfigError):
        shuffled(QUERIES, 0, oos_from=-1)
    with pytest.raises(ConfigError):
        shuffled(QUERIES, 0, oos_ramp=True)


@pytest.mark.parametrize("options", [["--oos-from", "-1"], ["--format", "pairs", "--oos-from", "10"], ["--oos-ramp"]])
def test_the_cli_refuses_an_oos_from_it_cannot_apply_before_loading_anything(tmp_path, capsys, options):
    from memcache.cli import main

    assert main(["eval", str(tmp_path / "not-read.jsonl"), *options]) == 2
    assert "--oos-from" in capsys.readouterr().err

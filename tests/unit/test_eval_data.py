import json

import pytest

from memcache.errors import ConfigError
from memcache.eval.commands import load_stream
from memcache.eval.data import OOS, LabeledPair, load_csv, load_intents, load_pairs, pair_groups
from memcache.eval.metrics import summarize
from memcache.eval.replay import QueryRecord


def test_csv_with_named_columns(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,intent\nhow are you,greet\nbye now,farewell\n")
    rows = load_csv(path, text_col="question", label_col="intent")
    assert [(r.text, r.label) for r in rows] == [("how are you", "greet"), ("bye now", "farewell")]
    with pytest.raises(ConfigError, match="--text-col"):  # the error says how to name them
        load_csv(path, text_col="text", label_col="intent")


def test_a_csv_file_is_read_as_csv_without_format(tmp_path):
    """`memcache eval FILE.csv` without --format reads CSV; any other name is an intents JSONL."""
    path = tmp_path / "Q.CSV"
    path.write_text("question,intent\nhow are you,greet\n")
    assert [r.label for r in load_stream(str(path), None, None, "question", "intent").items] == ["greet"]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n')
    assert [r.label for r in load_stream(str(jsonl), None, None, "text", "label").items] == ["x"]


def test_splits_and_oos_selection(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text(
        '{"text": "a", "label": "x", "split": "test"}\n{"text": "b", "label": "oos", "split": "test"}\n'
        '{"text": "c", "label": "x", "split": "train"}\n'
    )
    assert len(load_intents(path, ["test"])) == 2
    assert [r.text for r in load_stream(str(path), "intents", "test", "text", "label").items] == ["a"]
    assert [r.text for r in load_stream(str(path), "intents", "test,oos", "text", "label").items] == ["a", "b"]
    with pytest.raises(ConfigError):
        load_stream(str(path), "intents", "nosuchsplit", "text", "label")


def test_bad_rows_are_config_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": "x"}\n')
    with pytest.raises(ConfigError):
        load_pairs(path)
    path.write_text("not json\n")
    with pytest.raises(ConfigError):
        load_intents(path)


def test_summary_rates():
    records = [
        QueryRecord("hit", True, True, 0.9, 0.99, 1.0),
        QueryRecord("hit", False, True, 0.8, 0.98, 1.0),
        QueryRecord("miss", None, False, None, 0.0, 2.0),
        QueryRecord("audit", None, True, 0.9, 0.99, 3.0),
    ]
    s = summarize(records, max_false_hit_rate=0.02)
    assert s["queries"] == 4 and s["hits"] == 2 and s["false_hit_rate"] == 0.5
    assert s["error_rate"] == 0.25 and s["correct_hit_rate"] == 0.25 and s["reusable_rate"] == 0.75
    assert s["strong_calls"] == 0.5 and s["max_false_hit_rate"] == 0.02


def test_a_shadow_audited_hit_is_a_hit_and_a_strong_call():
    records = [
        QueryRecord("hit", True, True, 0.9, 0.99, 1.0, audited=True),
        QueryRecord("hit", True, True, 0.9, 0.99, 1.0),
        QueryRecord("miss", None, False, None, 0.0, 2.0),
    ]
    s = summarize(records)
    assert s["hits"] == 2 and s["audits"] == 1 and s["misses"] == 1
    assert s["strong_calls"] == 2 / 3 and s["correct_hit_rate"] == 2 / 3
    assert [r.paid for r in records] == [True, False, True]


def test_pairs_become_one_stream_of_groups(tmp_path):
    pairs = [
        LabeledPair("How do I learn Python?", "What is the best way to learn Python?", True),
        LabeledPair("What is the best way to learn Python?", "Best resources for learning Python?", True),
        LabeledPair("How do I learn Python?", "How do I learn Java?", False),
        LabeledPair("how do I learn  java?", "Is Java hard?", False),  # same question as above, other spelling
        LabeledPair("Is coffee healthy?", "Is coffee bad for you?", True),
    ]
    rows = pair_groups(pairs)
    label = {r.text: r.label for r in rows}
    assert len(rows) == 7  # each distinct question once (the two spellings of the Java one are one)
    python = {
        label["How do I learn Python?"],
        label["What is the best way to learn Python?"],
        label["Best resources for learning Python?"],
    }
    assert len(python) == 1 and OOS not in python  # joined transitively
    assert label["How do I learn Java?"] == label["Is Java hard?"] == OOS  # in no duplicate group
    assert label["Is coffee healthy?"] == label["Is coffee bad for you?"] not in python | {OOS}
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": "x?", "b": "y?", "label": 1}\n{"a": "z?", "b": "w?", "label": 0}\n')
    stream = load_stream(str(path), "groups", None, "text", "label", limit=1)
    assert stream.kind == "intents" and [r.text for r in stream.items] == ["x?", "y?"]


def test_where_keeps_rows_by_field_and_limit_cuts_the_shuffled_stream(tmp_path):
    from memcache.eval.commands import load_stream, parse_where

    path = tmp_path / "rows.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(
                {"text": f"q{i}", "label": f"l{i % 3}", "split": "test", "domain": ["travel", "home", "work"][i % 3]}
            )
            for i in range(30)
        )
    )
    where = parse_where(["domain=travel,home"])
    assert where == {"domain": {"travel", "home"}}
    stream = load_stream(str(path), "intents", "test", "text", "label", limit=5, where=where)
    assert len(stream.items) == 20 and {r.text for r in stream.items} == {f"q{i}" for i in range(30) if i % 3 != 2}
    assert stream.limit == 5
    with pytest.raises(ConfigError):
        parse_where(["domain"])
    with pytest.raises(ConfigError, match="no rows in .* for --splits test --where domain=moon,space$"):
        load_stream(str(path), "intents", "test", "text", "label", where={"domain": {"space", "moon"}})
    with pytest.raises(ConfigError):
        load_stream(str(path), "intents", "test", "text", "label", limit=0)

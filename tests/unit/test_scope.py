import pytest

from memcache.errors import InvalidRequestError
from memcache.scope import build_scope, check_text, normalize, split_messages


def scope(**overrides):
    args = {"tenant": "t", "model": "m", "params": {}, "earlier": []}
    args.update(overrides)
    return build_scope(**args).key


def test_normalize_joins_whitespace_only():
    assert normalize("  What IS\tthe  capital?\n") == normalize("What IS the capital?")
    assert normalize("What IS the capital?") != normalize("what is the capital?")


@pytest.mark.parametrize(
    "one, other",
    [
        ("What is 10² + 1?", "What is 102 + 1?"),
        ("½", "1⁄2"),
        ("Ⅳ", "IV"),
        ("H₂O", "H2O"),
        ("print('A  B')", "print('a b')"),
    ],
)
def test_exact_form_folds_no_case_and_no_compatibility_forms(one, other):
    assert normalize(one) != normalize(other)


def test_exact_form_joins_canonically_equal_text():
    assert normalize("caf\u00e9") == normalize("cafe\u0301")


def test_each_scope_dimension_changes_the_key():
    base = scope()
    assert scope(tenant="u") != base
    assert scope(model="m2") != base
    assert scope(params={"temperature": 0.7}) != base
    assert scope(earlier=[{"role": "system", "content": "be terse"}]) != base
    assert scope(earlier=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]) != base


def test_transport_params_do_not_change_the_key():
    assert scope(params={"stream": True, "timeout": 3, "api_key": "x", "mock_response": "y"}) == scope()


def test_split_messages_takes_the_last_user_turn():
    turn = split_messages(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "prefill"},
        ],
        max_chars=1000,
    )
    assert turn.query == "two" and len(turn.earlier) == 3 and turn.query_extras == ()
    assert turn.after == ({"role": "assistant", "content": "prefill"},)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        [{"role": "system", "content": "s"}],
        [{"content": "no role"}],
        [{"role": "user", "content": "  "}],
        [{"role": "user", "content": 42}],
    ],
)
def test_bad_messages_are_refused(messages):
    with pytest.raises(InvalidRequestError):
        split_messages(messages, max_chars=1000)


@pytest.mark.parametrize(
    "text",
    ["", "   \n", 5, None, b"bytes", "bad \udcff utf-8", "x" * 101, "\x00\x00", "\u200b\u200d\ufeff", "\x00 \u200b"],
)
def test_bad_text_is_refused(text):
    with pytest.raises(InvalidRequestError):
        check_text(text, what="query", max_chars=100)


def conversation_scope(messages, **kwargs):
    turn = split_messages(messages, max_chars=10_000)
    args = {"tenant": "t", "model": "m", "params": {}, **kwargs}
    return build_scope(earlier=turn.earlier, extra_parts=turn.query_extras, after=turn.after, **args).key


WEATHER = [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
        ],
    },
]


@pytest.mark.parametrize(
    "after_one, after_other",
    [
        (
            [{"role": "tool", "tool_call_id": "c1", "content": "72F sunny"}],
            [{"role": "tool", "tool_call_id": "c1", "content": "-10F blizzard"}],
        ),
        ([{"role": "tool", "tool_call_id": "c1", "content": "72F sunny"}], []),
    ],
    ids=["tool-result", "tool-result-vs-none"],
)
def test_messages_after_the_last_user_turn_are_in_the_scope(after_one, after_other):
    assert conversation_scope(WEATHER + after_one) != conversation_scope(WEATHER + after_other)


@pytest.mark.parametrize(
    "tail",
    [[{"role": "assistant", "content": "Sure! Here is"}], [{"role": "system", "content": "Answer in French."}]],
    ids=["assistant-prefill", "trailing-system"],
)
def test_a_prefill_or_a_trailing_instruction_changes_the_scope(tail):
    question = [{"role": "user", "content": "Is the deploy green?"}]
    assert conversation_scope(question + tail) != conversation_scope(question)


def test_developer_and_system_are_one_instruction_channel_and_names_count():
    def with_instruction(message):
        return conversation_scope([message, {"role": "user", "content": "hi"}])

    assert with_instruction({"role": "system", "content": "Be terse."}) == with_instruction(
        {"role": "developer", "content": "Be terse."}
    )
    assert with_instruction({"role": "system", "content": "Be terse.", "name": "a"}) != with_instruction(
        {"role": "system", "content": "Be terse.", "name": "b"}
    )
    assert conversation_scope([{"role": "user", "content": "What is my name?", "name": "alice"}]) != conversation_scope(
        [{"role": "user", "content": "What is my name?", "name": "bob"}]
    )


def test_no_tenant_is_not_the_tenant_called_default():
    assert scope(tenant=None) != scope(tenant="default")


@pytest.mark.parametrize("tenant", ["", "a\x00b", "bad \udcff", " ", "x" * 256, 5])
def test_bad_tenants_are_refused(tenant):
    with pytest.raises(InvalidRequestError):
        scope(tenant=tenant)


def test_parameters_count_by_value_not_by_repr():
    from dataclasses import dataclass

    import numpy as np

    big = np.zeros(10_000)
    changed = big.copy()
    changed[5_000] = 1.0
    assert scope(params={"x": big}) != scope(params={"x": changed})
    assert scope(params={"x": big}) != scope(params={"x": big.astype(np.float32)})

    @dataclass
    class Settings:
        level: int

    assert scope(params={"x": Settings(1)}) != scope(params={"x": Settings(2)})

    class Opaque:
        def __repr__(self):
            return "Opaque()"

    with pytest.raises(InvalidRequestError, match="cannot tell apart by value"):
        scope(params={"x": Opaque()})


def test_two_response_format_classes_named_alike_differ_by_schema():
    pydantic = pytest.importorskip("pydantic")

    def model_class(field_type):
        return pydantic.create_model("Answer", value=(field_type, ...))

    assert scope(params={"response_format": model_class(int)}) != scope(params={"response_format": model_class(str)})
    assert scope(params={"response_format": model_class(int)}) == scope(params={"response_format": model_class(int)})


def test_deep_nesting_is_a_typed_error_not_a_recursion_error():
    deep = "x"
    for _ in range(990):
        deep = [deep]
    with pytest.raises(InvalidRequestError, match="nested"):
        split_messages(
            [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "data", "d": deep}]}],
            max_chars=100_000,
        )
    with pytest.raises(InvalidRequestError, match="nested"):
        scope(params={"tools": deep})


def test_lone_surrogates_anywhere_are_a_typed_error():
    with pytest.raises(InvalidRequestError):
        scope(earlier=[{"role": "system", "content": "bad \udcff"}])
    with pytest.raises(InvalidRequestError):
        scope(params={"stop": ["\udcff"]})
    with pytest.raises(InvalidRequestError):
        scope(model="m\udcff")

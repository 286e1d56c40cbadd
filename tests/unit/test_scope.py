import pytest

from memcache.errors import InvalidRequestError
from memcache.scope import build_scope, check_text, normalize, split_messages


def scope(**overrides):
    args = {"tenant": "t", "model": "m", "params": {}, "earlier": []}
    args.update(overrides)
    return build_scope(**args).key


def test_normalize_ignores_case_and_whitespace():
    assert normalize("  What IS\tthe  capital?\n") == normalize("what is the capital?")


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
    text, earlier, extra = split_messages(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "one"},
         {"role": "assistant", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "two"}]}],
        max_chars=1000,
    )
    assert text == "two" and len(earlier) == 3 and extra == []


@pytest.mark.parametrize(
    "messages",
    [[], "hello", [{"role": "system", "content": "s"}], [{"content": "no role"}], [{"role": "user", "content": "  "}],
     [{"role": "user", "content": 42}]],
)
def test_bad_messages_are_refused(messages):
    with pytest.raises(InvalidRequestError):
        split_messages(messages, max_chars=1000)


@pytest.mark.parametrize("text", ["", "   \n", 5, None, b"bytes", "bad \udcff utf-8", "x" * 101])
def test_bad_text_is_refused(text):
    with pytest.raises(InvalidRequestError):
        check_text(text, what="query", max_chars=100)

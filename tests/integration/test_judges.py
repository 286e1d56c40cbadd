"""Judges on the real stack: the packaged model for EmbeddingJudge, LiteLLM over HTTP for LLMJudge."""

import json
import time

import pytest

from memcache import EmbeddingJudge, EscalationError, ExactJudge, LLMJudge, MemCache, ThresholdPolicy, cache_info
from memcache.judge import which_same


def test_exact_judge():
    assert ExactJudge().same_answer("q", "  Paris ", "paris")
    assert not ExactJudge().same_answer("q", "Paris", "Rome")


def test_embedding_judge_with_the_real_model(embedder):
    judge = EmbeddingJudge(embedder, threshold=0.8)
    assert judge.same_answer("capital?", "The capital of France is Paris.", "Paris is the capital of France.")
    assert not judge.same_answer("capital?", "The capital of France is Paris.", "Bake the bread for 40 minutes.")


def test_llm_judge_through_litellm(stub_llm, llm_kwargs):
    judge = LLMJudge("openai/judge", **llm_kwargs)
    assert judge.same_answer("capital?", "Paris is the capital.", "Paris, of course.")
    assert not judge.same_answer("capital?", "Berlin.", "Paris.")
    assert stub_llm.calls[-1]["model"] == "judge"


def test_llm_judge_names_which_of_several_answers_is_the_same_in_one_call(stub_llm, llm_kwargs):
    judge = LLMJudge("openai/judge", **llm_kwargs)
    calls = len(stub_llm.calls)
    assert judge.which_same("capital?", "Paris, indeed.", ["Berlin.", "Paris is the capital.", "Rome."]) == 1
    assert judge.which_same("capital?", "Madrid.", ["Berlin.", "Paris is the capital."]) is None
    assert len(stub_llm.calls) == calls + 2  # one call each, not one per answer
    assert judge.which_same("capital?", "paris", ["Berlin.", "Paris"]) == 1 and len(stub_llm.calls) == calls + 2
    assert which_same(ExactJudge(), "q", "Paris", ["Rome", "paris "]) == 1


def test_a_miss_whose_nearest_answer_differs_makes_two_judge_calls_at_most(db_url, embedder, stub_llm, llm_kwargs):
    """The label's comparison, then one call naming which of the next nearest says the same: the
    caller waits for them, so not one call per stored answer."""
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.999),
                  judge=LLMJudge("openai/judge", **llm_kwargs)) as cache:  # fmt: skip
        cache.write_back("What is the capital of France?", "Berlin is the capital.")
        cache.write_back("France's capital city?", "Lyon is the capital.")
        paris = cache.write_back("Which city is the capital of France?", "Paris is the capital.")
        result = cache.lookup("what's the capital of France?")
        nearest = [c.entry_id for c in result.candidates]
        assert nearest[0] != paris.id and paris.id in nearest  # the nearest says Berlin
        calls = len(stub_llm.calls)
        assert cache.write_back(result, "Paris, of course.").id == paris.id
        assert [c["model"] for c in stub_llm.calls[calls:]] == ["judge", "judge"]


def test_llm_judge_failure_is_an_escalation_error(llm_kwargs):
    with pytest.raises(EscalationError):
        LLMJudge("openai/judge", **{**llm_kwargs, "api_base": "http://127.0.0.1:9/v1"}).same_answer("q", "a", "b")


def test_the_judge_decides_the_label_of_a_paid_answer(db_url, embedder):
    class Recorder(ThresholdPolicy):
        labels: list = []

        def observe(self, features, correct, *, key=None):  # the Policy protocol
            self.labels.append(correct)

    policy = Recorder(0.99)
    with MemCache(db_url, embedder=embedder, policy=policy, judge=EmbeddingJudge(embedder, 0.8)) as cache:
        cache.write_back("What is the capital of France?", "The capital of France is Paris.")
        cache.write_back(cache.lookup("Which city is France's capital?"), "Paris is the capital of France.")
        cache.write_back(cache.lookup("How long do I bake bread?"), "Bake the bread for 40 minutes.")
    assert policy.labels == [True, False]


@pytest.mark.parametrize("store", ["db_url", "pg_url"])
def test_an_answer_the_judge_finds_the_same_joins_the_nearest_entry(request, store, embedder):
    """A model words each answer anew: a paid answer that the judge finds the same as the nearest
    entry's is another wording of that entry's question, not an entry of its own."""
    url = request.getfixturevalue(store)
    with MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.99), judge=EmbeddingJudge(embedder, 0.8)) as cache:
        first = cache.write_back("What is the capital of France?", "The capital of France is Paris.")
        joined = cache.write_back(cache.lookup("Which city is France's capital?"), "Paris is the capital of France.")
        assert joined.id == first.id and joined.answer == "The capital of France is Paris."
        assert set(cache.get(first.id).queries) == {"What is the capital of France?", "Which city is France's capital?"}
        other = cache.write_back(cache.lookup("How long do I bake bread?"), "Bake the bread for 40 minutes.")
        assert other.id != first.id
        assert (
            cache.write_back("Capital of France?", "Paris is the capital of France.").id != first.id
        )  # no lookup, no judge
        assert (cache.stats().entries, cache.stats().keys) == (3, 4)


def test_an_answer_judged_the_same_as_an_expired_entry_makes_a_new_one(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.99), judge=EmbeddingJudge(embedder, 0.8),
                  ttl=0.5) as cache:  # fmt: skip
        first = cache.write_back("What is the capital of France?", "The capital of France is Paris.")
        result = cache.lookup("Which city is France's capital?")  # the entry is still there when looked up
        time.sleep(0.6)
        joined = cache.write_back(result, "Paris is the capital of France.")
        assert joined.id != first.id and joined.answer == "Paris is the capital of France."


def test_memcache_ask_with_a_judge_model_joins_a_reworded_answer(tmp_path, stub_llm, cli):
    """`--judge-model`: the stub's answers to two wordings differ in text and its judge finds them
    the same, so the second answer joins the first's entry; without a judge it is an entry of its own."""
    for judged, entries in ((True, 1), (False, 2)):
        env = {"MEMCACHE_DATABASE_URL": f"sqlite:///{tmp_path / f'{judged}.db'}"}
        connection = ["--model", "openai/stub-strong", "--api-base", stub_llm.base_url, "--api-key", "k"]
        judge = ["--judge-model", "openai/judge"] if judged else []
        for question in ("How do I reset my password?", "How can I reset my password?"):
            done = cli(["ask", question, *connection, *judge], env)
            assert done.returncode == 0 and "[miss" in done.stderr, done.stderr
        stats = json.loads(cli(["stats", "--json"], env).stdout)
        assert (stats["entries"], stats["keys"]) == (entries, 2)
    assert any(call["model"] == "judge" for call in stub_llm.calls)


def test_a_judge_that_fails_loses_no_paid_answer(db_url, embedder, llm_kwargs):
    dead = LLMJudge("openai/judge", **{**llm_kwargs, "api_base": "http://127.0.0.1:9/v1"})
    with MemCache(
        db_url, embedder=embedder, policy=ThresholdPolicy(0.99), judge=dead, strong_model="openai/m"
    ) as cache:
        for question in ("How do I reset my password?", "What is the capital of France?"):  # the 2nd is judged
            reply = cache.completion(messages=[{"role": "user", "content": question}], **llm_kwargs)
            assert reply.choices[0].message.content == f"Answer to: {question}" and cache_info(reply).stored
        assert cache.stats().entries == 2 and cache.stats().labels == 0


def test_the_llm_judge_calls_litellm_as_memcache_does(stub_llm):
    """In a fresh process, with no key and no LiteLLM setting: LiteLLM is imported with its local
    price table (no download at import) and a server named by api_base needs no key."""
    import os
    import subprocess
    import sys

    code = (
        f"import os; from memcache import LLMJudge; judge = LLMJudge('openai/judge', api_base={stub_llm.base_url!r}); "
        "print(judge.same_answer('q', 'Paris, of course.', 'Paris is the capital.'), "
        "judge.same_answer('q', 'Yes, it is.', 'No.'), os.environ.get('LITELLM_LOCAL_MODEL_COST_MAP'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LITELLM_LOCAL_MODEL_COST_MAP", "OPENAI_API_KEY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["True", "False", "True"], done.stderr[-2000:]


def test_exact_judge_that_never_agrees_says_so_once(db_url, embedder, caplog):
    """Answers worded freely never equal a stored text: after 200 such labels the log says that
    ExactJudge is why no paraphrase is served, once."""
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.999)) as cache:
        cache.write_back("Tell me about item 0", "Item 0 is a kind of thing, worded one way.")
        with caplog.at_level("WARNING", logger="memcache"):
            for i in range(1, 241):
                cache.write_back(cache.lookup(f"Tell me about item {i}"), f"Item {i} is a kind of thing, worded anew.")
        assert cache.stats().labels == 240
    hints = [r for r in caplog.records if "ExactJudge never finds two the same" in r.getMessage()]
    assert len(hints) == 1


def test_the_judges_calls_and_spend_are_counted_and_leave_the_saving(db_url, embedder, llm_kwargs, cli):
    judge = LLMJudge("openai/gpt-4o-mini", **llm_kwargs)  # a name LiteLLM prices
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.999), strong_model="openai/gpt-4o",
                  judge=judge) as cache:  # fmt: skip
        for question in ("How do I reset my password?", "What is the capital of France?"):
            cache.completion(messages=[{"role": "user", "content": question}], **llm_kwargs)
        stats = cache.stats()
        assert stats.judge_calls == 1 and stats.judge_tokens > 0 and 0 < stats.judge_spend_micro_usd
        # both lookups paid the strong model, so all that is left of the saving is the judge's cost
        assert stats.strong_calls == 2 and stats.saving_micro_usd == -stats.judge_spend_micro_usd
    shown = cli(["stats", "--database-url", db_url, "--json"]).stdout
    assert json.loads(shown)["lifetime"]["judge_calls"] == 1

"""Judges on the real stack: the packaged model for EmbeddingJudge, LiteLLM over HTTP for LLMJudge."""

import pytest

from memcache import EmbeddingJudge, EscalationError, ExactJudge, LLMJudge, MemCache, ThresholdPolicy


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

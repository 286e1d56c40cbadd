"""Test doubles for the decision alone (everything else in the tests is the real stack)."""

from __future__ import annotations

from dataclasses import replace

from memcache import ThresholdPolicy


class AuditEveryHit(ThresholdPolicy):
    """Turns every would-be hit into an audit, so the audit path is taken on each paraphrase."""

    def decide(self, candidates, entries):
        decision = super().decide(candidates, entries)
        return replace(decision, action="audit") if decision.action == "hit" else decision


class HoldEveryHit(ThresholdPolicy):
    """Turns every would-be hit into a held audit, as `CalibratedPolicy` does after a traffic shift."""

    def decide(self, candidates, entries):
        decision = super().decide(candidates, entries)
        return replace(decision, action="audit", held=True) if decision.action == "hit" else decision

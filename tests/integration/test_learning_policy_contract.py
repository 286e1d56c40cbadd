"""`LearningPolicy` is the whole contract the controller asks of a learning policy: one written
from the Protocol alone (not a `CalibratedPolicy`) runs on a real store beside another instance,
and the controller never probes it for more."""

from __future__ import annotations

from conftest import HashingEmbedder
from sqlalchemy import select

from memcache import LearningPolicy, MemCache, ThresholdPolicy
from memcache.policy import PolicyStatus
from memcache.schema import MetaRow
from memcache.store import SHIFT_COUNTS

SHARE = [(2, 10, 30, 10, 30)]


class ProtocolOnlyPolicy(ThresholdPolicy):
    """A threshold rule that learns nothing, with every `LearningPolicy` member recorded."""

    claim_limit = 10
    label_limit = 10
    shift_hold_audits = 5

    def __init__(self, share=SHARE) -> None:
        super().__init__(0.9)
        self.share, self.pooled, self.claims, self.labels, self.holds = share, [], [], [], []
        self.scope_sizes, self.scope_keys, self.scope_audits = [], [], []

    served = 0
    holding = False

    def decide(self, candidates, entries, *, scope_size=None, scope_key=None):
        self.scope_sizes.append(scope_size)
        self.scope_keys.append(scope_key)
        return super().decide(candidates, entries)

    def load_audit_claims(self, claims) -> None:
        self.claims.extend(claims)

    def load_scope_audits(self, audits) -> None:
        self.scope_audits.append(dict(audits))

    def load_labels(self, labels) -> None:
        self.labels.extend(labels)

    def resume_hold(self, audits: int) -> None:
        self.holds.append(audits)

    def shorten_hold(self, audits: int) -> None:
        self.holds.append(audits)

    def shift_counts(self, parts: int):
        return self.share

    def pooled_shift(self, shares) -> bool:
        self.pooled.append(shares)
        return False

    def observe_audit(self, claimed_confidence, correct, *, elsewhere=False, scope_key=None) -> None:
        pass

    def set_hindsight(self, examples, entries) -> None:
        pass

    def status(self) -> PolicyStatus:
        return PolicyStatus(self.max_false_hit_rate, None, self.max_false_hit_rate, 1.0, 0, 0)


def shift_share_rows(cache: MemCache) -> list[str]:
    with cache.store.engine.connect() as conn:
        return conn.execute(select(MetaRow.name).where(MetaRow.name.startswith(SHIFT_COUNTS))).scalars().all()


def test_a_policy_written_from_the_protocol_alone_learns_and_pools_beside_another_instance(tmp_path):
    url, embedder = f"sqlite:///{tmp_path / 'memcache.db'}", HashingEmbedder()
    first, second = ProtocolOnlyPolicy(), ProtocolOnlyPolicy(share=[(3, 10, 30, 10, 30)])
    assert isinstance(first, LearningPolicy)
    options = dict(embedder=embedder, sync_interval=None, relabel_in_background=False)
    with MemCache(url, policy=first, **options) as a, MemCache(url, policy=second, **options) as b:
        a.write_back("how do I renew my passport", "Fill in form DS-82.")
        looked_up = a.lookup("how do I renew my passport please")
        assert first.scope_sizes == [1]  # the controller says how many questions the scope holds
        assert first.scope_keys == [looked_up.scope.key]  # ... and which scope it is
        assert first.scope_audits == [{}]  # at start-up: the audits each scope's hits had (none yet)
        a.sync()  # publishes its share: no other instance yet
        b.sync()  # reads it, publishes its own, and tests both together
        assert second.pooled == [[[(3, 10, 30, 10, 30)], [(2, 10, 30, 10, 30)]]]
        assert len(shift_share_rows(a)) == 2
        assert a.stats().max_false_hit_rate == first.max_false_hit_rate


def test_a_policy_that_tests_for_no_shift_publishes_no_share(tmp_path):
    url = f"sqlite:///{tmp_path / 'memcache.db'}"
    policy = ProtocolOnlyPolicy(share=None)
    with MemCache(url, embedder=HashingEmbedder(), policy=policy, sync_interval=None, relabel_in_background=False) as a:
        a.write_back("how do I renew my passport", "Fill in form DS-82.")
        a.sync()
        assert shift_share_rows(a) == [] and policy.pooled == []

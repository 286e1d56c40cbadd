from memcache.warm_up import WarmUpCount


def test_a_scope_first_asked_about_after_the_pools_warm_up_is_late_until_its_own_hits():
    count = WarmUpCount(hits=3, max_audit_rate=0.2)
    assert count.in_warm_up("early") and count.in_warm_up(None)  # the pool's warm-up: every scope's
    for scope in ("early", "early", None):
        count.count_hit(scope)
    assert count.served == 3 and count.scope_served("early") == 2
    assert not count.in_warm_up("early") and not count.in_warm_up(None)  # grew up with the pool's
    assert count.in_warm_up("late") and count.late_scopes == {"late"}  # first asked about now
    for _ in range(3):
        count.count_hit("late")
    assert not count.in_warm_up("late") and not count.late_scopes


def test_audits_stored_or_read_from_other_instances_count_at_least_one_over_the_audit_rate():
    count = WarmUpCount(hits=10, max_audit_rate=0.2)
    count.resume(2)  # two stored audits: at least 10 hits served
    count.resume(1)  # never back
    assert count.served == 10
    count.resume_scopes({"grown": 2, "short": 1})
    assert (count.scope_served("grown"), count.scope_served("short")) == (10, 5)
    assert count.late_scopes == {"short"}  # short of its hits at a restart: the cautious side
    count.count_audit_elsewhere("new")  # another instance served there first, after the pool's warm-up
    count.count_audit_elsewhere(None)
    assert count.served == 20 and count.scope_served("new") == 5 and "new" in count.late_scopes

"""The feed of other instances' labels: each read once, a late commit below the highest id read
not lost, and what start-up loaded never read again."""

from memcache.label_feed import LOOKBACK, LabelFeed


class Table:
    """Committed label ids of other instances; a row is its id, for the test."""

    def __init__(self, ids=()):
        self.ids = set(ids)

    def feed(self) -> LabelFeed:
        ids_after = lambda after: sorted(i for i in self.ids if i > after)  # noqa: E731
        return LabelFeed(ids_after, lambda ids: list(ids), ids_after)


def test_each_label_is_read_once_and_a_late_commit_below_the_highest_is_not_lost():
    table = Table({1, 2, 4})  # 3 was inserted before 4 but has not committed yet
    feed = table.feed()
    assert feed.new_rows() == [1, 2, 4]
    assert feed.new_rows() == []
    table.ids |= {3, 5}
    assert feed.new_rows() == [3, 5]
    assert feed.new_rows() == []


def test_start_up_loads_up_to_the_highest_and_the_feed_goes_on_from_there():
    table = Table(range(1, 11))
    feed = table.feed()
    feed.start(10)  # start-up loaded 1..10
    table.ids |= {11}
    assert feed.new_rows() == [11]


def test_a_commit_later_than_the_look_back_is_given_up():
    table = Table({1, LOOKBACK + 10})
    feed = table.feed()
    assert feed.new_rows() == [1, LOOKBACK + 10]
    table.ids |= {5, LOOKBACK + 11}  # 5 is more than LOOKBACK below the highest read
    assert feed.new_rows() == [LOOKBACK + 11]

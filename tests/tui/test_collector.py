"""The garbage collector's policy (carecli/screens/collector.py): survivors of a full pass are frozen, so the
next pass walks only what is new; frozen cyclic garbage goes at a deep pass; deep passes come with growth."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from carecli.screens import collector as collector_module
from carecli.screens.collector import Collector


class Node:
    """A tracked object that can be part of a cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def collector() -> Iterator[Collector]:
    fresh = Collector()
    fresh.start()
    try:
        yield fresh
    finally:
        fresh.stop()


def cycle() -> tuple[weakref.ref[Node], list[Node]]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first), [first]


def count_freeze_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets an item each time gc.get_freeze_count walks the frozen heap."""
    counted: list[int] = []
    real = gc.get_freeze_count

    def get_freeze_count() -> int:
        counted.append(1)
        return real()

    monkeypatch.setattr(gc, "get_freeze_count", get_freeze_count)
    return counted


def is_frozen(obj: object) -> bool:
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_a_full_pass_freezes_what_survived_it(collector: Collector) -> None:
    kept = [Node() for _ in range(100)]
    assert not any(is_frozen(node) for node in kept)
    gc.collect()  # a full pass, as an automatic one would be
    assert collector.automatic == 1
    assert all(is_frozen(node) for node in kept)
    newer = Node()
    assert not is_frozen(newer)  # made after the pass: the next pass walks it
    gc.collect(1)  # a young pass freezes nothing
    assert not is_frozen(newer) and collector.automatic == 1


def test_settling_freezes_what_was_made_without_a_pass_and_counts_it_as_growth(
        collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = [Node() for _ in range(100)]
    watched, holder = cycle()
    holder.clear()  # garbage made since the last freeze: frozen too, till a deep pass
    before = collector.estimate
    collector.settle()
    assert all(is_frozen(node) for node in kept)
    assert collector.automatic == 0 and collector.idle == 0  # no pass ran
    assert collector.estimate >= before + len(kept)  # never under the growth: the deep pass still comes
    gc.collect()
    assert watched() is not None  # frozen garbage: no ordinary pass frees it
    monkeypatch.setattr(collector_module, "DEEP_GROWTH", -1)
    assert collector.pause_pass() is True
    assert watched() is None  # the deep pass does


def test_settling_does_nothing_before_the_start() -> None:
    idle = Collector()
    node = Node()
    idle.settle()
    assert not is_frozen(node) and idle.estimate == 0


def test_frozen_cyclic_garbage_goes_at_a_deep_pass_only(collector: Collector,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    watched, holder = cycle()
    gc.collect()  # the cycle is alive: frozen
    holder.clear()  # now garbage, but frozen: no ordinary pass frees it
    assert watched() is not None
    assert collector.pause_pass() is False and collector.idle == 1
    gc.collect()
    assert watched() is not None
    monkeypatch.setattr(collector_module, "DEEP_GROWTH", -1)  # any growth calls for a deep pass
    assert collector.pause_pass() is True and collector.deep == 1
    assert watched() is None


def test_garbage_made_since_the_last_pass_goes_at_the_next_one(collector: Collector) -> None:
    watched, holder = cycle()
    holder.clear()
    assert watched() is not None
    collector.pause_pass()
    assert watched() is None


def test_deep_passes_come_with_growth_and_reset_it(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector_module, "DEEP_GROWTH", 5_000)
    monkeypatch.setattr(collector_module, "FORCED_GROWTH", 20_000)
    kept: list[Node] = []
    assert collector.pause_pass() is False
    kept.extend(Node() for _ in range(6_000))
    assert not collector.overdue()
    assert collector.pause_pass() is False  # the pass that freezes them: growth is counted after it
    assert collector.growth() >= 6_000
    assert collector.pause_pass() is True
    assert collector.growth() < 100  # what the pass itself left (a few frames' objects)
    kept.extend(Node() for _ in range(21_000))
    gc.collect()
    assert collector.overdue()
    collector.pause_pass()
    assert not collector.overdue()


def test_stop_ends_the_freezing_and_thaws(collector: Collector) -> None:
    watched, holder = cycle()
    gc.collect()
    holder.clear()
    collector.stop()  # what was frozen is collectable again
    assert gc.get_freeze_count() == 0
    node = Node()
    gc.collect()
    assert watched() is None
    assert not is_frozen(node) and collector.automatic == 1
    collector.stop()  # twice is harmless


def test_the_half_second_check_does_not_walk_the_frozen_heap(collector: Collector,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting frozen objects walks them all (~20 ms for 450,000): the check made every half second uses the
    running bound and counts only once the bound passes the limit."""
    counted = count_freeze_counts(monkeypatch)
    for _ in range(20):
        assert not collector.overdue()
        collector.pause_pass()
    assert counted == []
    monkeypatch.setattr(collector_module, "FORCED_GROWTH", 1_000)
    kept = [Node() for _ in range(2_000)]
    gc.collect()
    assert collector.overdue() and counted == [1]
    del kept


def test_starting_does_not_walk_the_frozen_heap_and_growth_is_never_undercounted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The start is on the way to the worklist (~20 ms to count start-up's objects): the first count comes
    with the first growth check, taking the bound for what was frozen since, so a deep pass is never late."""
    counted = count_freeze_counts(monkeypatch)
    fresh = Collector()
    fresh.start()
    try:
        assert counted == []
        kept = [Node() for _ in range(3_000)]
        gc.collect()  # freezes them
        assert fresh.growth() >= 3_000 and counted == [1]
        del kept
    finally:
        fresh.stop()


def test_start_up_holds_the_collector_until_the_first_screen_and_never_turns_on_one_it_found_off() -> None:
    """`carecli app` starts with the collector off (what start-up makes lives as long as the app) and turns it
    on once its first screen is painted; a collector someone else turned off stays off."""
    from carecli.screens.collector import hold_start_up, release_start_up

    was = gc.isenabled()
    try:
        gc.enable()
        hold_start_up()
        assert not gc.isenabled()
        release_start_up()
        assert gc.isenabled()
        release_start_up()  # idempotent
        assert gc.isenabled()
        gc.disable()
        hold_start_up()
        release_start_up()
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()

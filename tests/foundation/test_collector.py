"""frozen_heap: full collections skip the heap a push started with, and nothing stays frozen after it."""

from __future__ import annotations

import gc
import threading
import weakref

from airflow_provider_didomi_dynamics.core.collector import frozen_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_the_heap_is_frozen_inside_and_thawed_after_the_last_block() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before
        with frozen_heap():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0, "an inner block must not thaw the outer one's heap"
    assert gc.get_freeze_count() == 0


def test_garbage_made_inside_is_still_collected_and_old_garbage_after() -> None:
    old = _Node()
    old.other = old  # a cycle alive when the block starts: frozen, so not collected inside
    old_ref = weakref.ref(old)
    with frozen_heap():
        del old
        made = _Node()
        made.other = made
        made_ref = weakref.ref(made)
        del made
        gc.collect()
        assert made_ref() is None, "what the push allocates is collected as usual"
        assert old_ref() is not None
    gc.collect()
    assert old_ref() is None, "after the block the old heap is collectable again"


def test_concurrent_blocks_thaw_when_the_last_one_ends() -> None:
    inside, release = threading.Event(), threading.Event()

    def other_push() -> None:
        with frozen_heap():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other_push)
    with frozen_heap():
        thread.start()
        assert inside.wait(5)
    assert gc.get_freeze_count() > 0, "the other push is still running"
    release.set()
    thread.join(5)
    assert gc.get_freeze_count() == 0

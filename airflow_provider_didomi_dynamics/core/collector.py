"""Keep Python's full garbage collections off the heap a task already had, while its writer threads wait on the wire.

An Airflow task process holds a few hundred thousand long-lived objects (Airflow, pandas, the input rows). Every
full (generation 2) collection walks all of them with the GIL held: 150-200 ms in which no writer thread can send
or read an answer. A 100k-row push met four of them (0.8 s of 18 s), a 20k-row push one, right before its first
write. ``gc.freeze()`` moves what exists now into the permanent generation, so the collections the push still
triggers walk only what it allocated since; ``gc.unfreeze()`` hands the old objects back when the last frozen
block ends, so nothing stays uncollectable after it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects alive now for the block; an inner block freezes what was allocated since, and the heap
    thaws when the outermost (or last concurrent) block ends."""
    global _depth
    with _lock:
        gc.freeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()


__all__ = ["frozen_heap"]

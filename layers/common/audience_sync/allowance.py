"""How many identifiers a flush holds in memory at once, across its workers.

One audience's flush reads at most `outbox.MAX_IDENTIFIERS_PER_FLUSH` identifiers (~143 MB decoded, measured by
bench/memory.py); eight workers reading eight large audiences at once would need ~1.1 GB of a 512 MB function,
and a flush that runs out of memory fails the same way at every retry. Each worker first takes what its audience's
summary counts from a shared allowance, in the order the workers asked (the fullest, oldest audiences first).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WAIT_SLICE_SECONDS = 0.5  # how often a waiting worker looks at the time it has left


class Allowance:
    """A count of identifiers shared by threads, taken first come, first served."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def holding(self, identifiers: int, may_wait: Callable[[], bool]) -> Iterator[bool]:
        """Hold `identifiers` (at most the whole allowance) while the block runs: True once they are taken;
        False, at once, when `may_wait()` turned false before this caller's turn came."""
        wanted = min(identifiers, self.total)
        turn = object()
        with self._changed:
            self._queue.append(turn)
            while (self._queue[0] is not turn or self._free < wanted) and may_wait():
                self._changed.wait(WAIT_SLICE_SECONDS)
            taken = self._queue[0] is turn and self._free >= wanted
            self._queue.remove(turn)
            if taken:
                self._free -= wanted
            self._changed.notify_all()
        try:
            yield taken
        finally:
            if taken:
                with self._changed:
                    self._free += wanted
                    self._changed.notify_all()

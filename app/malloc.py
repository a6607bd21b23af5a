"""glibc malloc, tuned for a server of threads that stream bytes in 1 MiB pieces.

`berth serve` puts TUNING in the environment before gunicorn starts (glibc reads it at
process start), and each worker gives its free heap back when it has been idle a moment
(IdleTrim). Measured in docs/performance.md (Memory).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

TUNING = {
    # Blocks of 128 KiB and more were served by a fresh mmap, faulted in page by page and
    # unmapped on free, until glibc's adaptive threshold had grown: a worker's first layer
    # uploads paid for that on every 1 MiB buffer (first 4 x 64 MiB push ~190 MB/s, ~230
    # with these two). Buffers up to 4 MiB come from the heap and are reused; up to 16 MiB
    # of free heap is kept while the worker is busy (IdleTrim returns it once idle).
    "MALLOC_MMAP_THRESHOLD_": str(4 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 1024 * 1024),
    # glibc gives threads arenas of their own, up to 8 per core: 10-20 threads per worker
    # each kept their own partly free heap (~19 MiB of a worker's ~45 MiB PSS after the
    # benchmark). The GIL already serialises most allocations, so two arenas cost no speed.
    "MALLOC_ARENA_MAX": "2",
}

# A worker counts as idle once no connection has been in a request for this long.
IDLE_SECONDS = 1.0


def _glibc_trim() -> Callable[[], object] | None:
    """malloc_trim(0), or None where the C library has none (musl, macOS)."""
    # The process's own symbols: the libc it runs on, found without find_library's
    # ldconfig subprocess (gunicorn builds each worker object in the master).
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class IdleTrim:
    """Hands the heap's free pages back to the kernel once per quiet spell.

    MALLOC_TRIM_THRESHOLD_ keeps free memory for the next upload's buffers while requests
    come; an idle worker holding it only costs the machine memory. tick() is called from
    the worker's main loop (at least once a second) with whether any request is running:
    the trim runs once, IDLE_SECONDS after the last request ended, and not again until
    another request has run. A trim of a worker's ~40 MiB heap takes a few ms.
    """

    def __init__(
        self, trim: Callable[[], object] | None = None, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self._trim = trim if trim is not None else _glibc_trim()
        self._idle_seconds = idle_seconds
        self._last_busy: float | None = None  # None: nothing ran since the last trim

    def tick(self, busy: bool, now: float) -> bool:
        """Record the worker's state at `now`; True when this call trimmed."""
        if busy:
            self._last_busy = now
            return False
        if self._last_busy is None or now - self._last_busy < self._idle_seconds:
            return False
        self._last_busy = None
        if self._trim is None:
            return False
        self._trim()
        return True

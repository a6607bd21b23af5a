"""Brute-force protection: too many failed logins from one address -> wait.

A sliding window per client address, kept in each process and shared by its threads
(gunicorn's gthread workers): with W worker processes an address gets at most
W x auth_max_failures tries per window before every worker turns it away. Successes do
not reset the count, so a valid account cannot be used to keep guessing another one.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class FailureLimiter:
    MAX_ADDRESSES = 100_000

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _prune(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, address: str) -> int | None:
        """Seconds `address` must wait before trying again, or None if it may try now."""
        now = time.monotonic()
        with self._lock:
            times = self._failures.get(address)
            if not times:
                return None
            self._prune(times, now)
            if len(times) < self.limit:
                return None
            return max(1, math.ceil(times[-self.limit] + self.window - now))

    def fail(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.MAX_ADDRESSES:
                for key in list(self._failures):
                    self._prune(self._failures[key], now)
                    if not self._failures[key]:
                        del self._failures[key]
            times = self._failures.setdefault(address, deque())
            times.append(now)
            self._prune(times, now)
            while len(times) > self.limit:  # older entries can no longer matter
                times.popleft()

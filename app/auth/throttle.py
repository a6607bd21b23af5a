"""Brute-force protection: too many failed logins -> wait.

Failures are rows in the database, so every worker and every instance counts the same ones
(per-process counters let W workers take W times the guesses). A sliding window of
`auth_failure_window` seconds, two counts:
- per address and user name: `limit` failures lock that name out from that address (the
  right password included, until the window has passed); a guesser elsewhere cannot lock
  the account's owner out;
- per address: ADDRESS_FACTOR x `limit` failures, whatever the names, stop one address
  trying many accounts.
Successes do not reset the counts, so a valid account cannot be used to keep guessing
another one.
"""

from __future__ import annotations

import math
import threading
import time

from sqlalchemy import bindparam, delete, func, insert, or_, select

from app.db import Database
from app.db.models import AuthFailure

ADDRESS_FACTOR = 3
# A client that logs in with every request (Basic credentials, cached by the Authenticator)
# must not cost a database read each time: an "all clear" is believed this long. A failure
# in this process forgets it at once; one in another worker is seen at most this late, and
# only by that address's next first try.
CLEAR_FOR = 1.0
MAX_CLEAR = 10_000

# Every Basic login asks this (one statement for both keys, compiled once: Database.rows).
_COUNTS = (
    select(AuthFailure.key, func.count())
    .where(
        or_(AuthFailure.key == bindparam("by_user"), AuthFailure.key == bindparam("by_address")),
        AuthFailure.at > bindparam("since"),
    )
    .group_by(AuthFailure.key)
)
_NTH_RECENT = (
    select(AuthFailure.at)
    .where(AuthFailure.key == bindparam("key"), AuthFailure.at > bindparam("since"))
    .order_by(AuthFailure.at.desc())
    .offset(bindparam("nth"))
    .limit(1)
)
_RECORD = insert(AuthFailure)
_EXPIRE = delete(AuthFailure).where(
    AuthFailure.key.in_(bindparam("keys", expanding=True)), AuthFailure.at <= bindparam("since")
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _safe(text: str, limit: int) -> str:
    # Names and addresses are the client's to invent: escaped (no NUL reaches PostgreSQL)
    # and bounded to the column.
    return text.encode("unicode_escape").decode("ascii")[:limit]


def _keys(address: str, user: str) -> tuple[str, str]:
    where = _safe(address, 80)
    return f"user:{where}:{_safe(user, 500)}", f"addr:{where}"


class FailureLimiter:
    def __init__(self, db: Database, limit: int, window: float) -> None:
        self.db = db
        self.limit = limit
        self.window_ms = int(window * 1000)
        self._lock = threading.Lock()
        self._clear: dict[tuple[str, str], float] = {}  # (address, user) -> clear until

    def retry_after(self, address: str, user: str) -> int | None:
        """Seconds before `user` may try again from `address`, or None if it may now."""
        if self._clear.get((address, user), 0.0) > time.monotonic():
            return None
        wait = self._wait(address, user)
        if wait is None:
            with self._lock:
                if len(self._clear) >= MAX_CLEAR:
                    self._clear.clear()
                self._clear[(address, user)] = time.monotonic() + CLEAR_FOR
        return wait

    def _wait(self, address: str, user: str) -> int | None:
        now = _now_ms()
        since = now - self.window_ms
        by_user, by_address = _keys(address, user)
        params = {"by_user": by_user, "by_address": by_address, "since": since}
        counts = dict(self.db.rows(_COUNTS, params))
        limits = {by_user: self.limit, by_address: self.limit * ADDRESS_FACTOR}
        over = [key for key, limit in limits.items() if counts.get(key, 0) >= limit]
        if not over:
            return None
        wait = 1
        for key in over:
            # The window reopens when the limit-th most recent failure leaves it.
            params = {"key": key, "since": since, "nth": limits[key] - 1}
            found = self.db.rows(_NTH_RECENT, params)
            if found:
                wait = max(wait, math.ceil((found[0][0] + self.window_ms - now) / 1000))
        return wait

    def fail(self, address: str, user: str) -> None:
        with self._lock:  # the address's count went up, for every name tried from it
            self._clear = {key: until for key, until in self._clear.items() if key[0] != address}
        now = _now_ms()
        keys = _keys(address, user)
        with self.db.transaction(write=True) as session:
            session.execute(_RECORD, [{"key": key, "at": now} for key in keys])
            # Rows past the window can no longer matter.
            session.execute(_EXPIRE, {"keys": list(keys), "since": now - self.window_ms})

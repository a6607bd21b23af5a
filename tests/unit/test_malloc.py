"""A worker hands its free heap back once per quiet spell, never while requests run."""

from __future__ import annotations

from app.malloc import IdleTrim


class Calls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_trims_once_after_the_last_request_has_been_over_for_a_while() -> None:
    trims = Calls()
    idle = IdleTrim(trims, idle_seconds=1.0)
    assert not idle.tick(busy=True, now=10.0)
    assert not idle.tick(busy=False, now=10.5)  # a gap between requests is not idleness
    assert idle.tick(busy=False, now=11.0)
    assert not idle.tick(busy=False, now=12.0)  # nothing ran since: nothing to give back
    assert not idle.tick(busy=False, now=60.0)
    assert trims.count == 1


def test_never_trims_while_a_request_runs() -> None:
    trims = Calls()
    idle = IdleTrim(trims, idle_seconds=1.0)
    for second in range(100):
        idle.tick(busy=True, now=float(second))  # one long upload, say
    assert trims.count == 0
    assert idle.tick(busy=False, now=100.0)
    assert trims.count == 1


def test_a_fresh_worker_that_served_nothing_does_not_trim() -> None:
    trims = Calls()
    idle = IdleTrim(trims, idle_seconds=1.0)
    assert not any(idle.tick(busy=False, now=float(t)) for t in range(10))
    assert trims.count == 0


def test_each_quiet_spell_after_work_trims_again() -> None:
    trims = Calls()
    idle = IdleTrim(trims, idle_seconds=1.0)
    for start in (0.0, 10.0, 20.0):
        idle.tick(busy=True, now=start)
        idle.tick(busy=False, now=start + 2)
    assert trims.count == 3


def test_glibc_trim_is_found_here() -> None:
    # Berth's images and CI run on glibc: the trim must be real there, not a no-op.
    assert IdleTrim()._trim is not None
    IdleTrim()._trim()  # type: ignore[misc]

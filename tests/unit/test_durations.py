"""The one duration grammar of every setting (Go's time.ParseDuration plus days): what an
operator may write, and that a mistake stops start-up with a message naming the setting."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import ConfigError, load_settings, parse_duration


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("500ms", 0.5),
        ("90s", 90),
        ("30m", 1800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (".5h", 1800),
        ("7d", 7 * 86400),
        ("1d12h", 129600),
        ("1h0m1s", 3601),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("2000000000ns", 2),
        ("2", 2),  # plain seconds, as a string (environment variables)
        ("2.5", 2.5),
        ("0", 0),
        ("  45s ", 45),
        (3, 3),  # TOML numbers
        (0.25, 0.25),
        (0, 0),
    ],
)
def test_durations(raw: Any, seconds: float) -> None:
    assert parse_duration(raw, "timeout") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "soon",
        "10x",
        "1w",  # Go has no weeks; neither do we
        "1y",
        "h",
        "1h30",  # a number without a unit after a unit
        "30 m",
        "1h 30m",
        "1.5.5s",
        "-5",
        "-1s",
        "+1s",
        "1H",
        True,
        False,
        None,
        [1],
        {"seconds": 1},
    ],
)
def test_bad_durations_name_the_setting(raw: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(raw, "notifications[hook].timeout")
    assert str(info.value).startswith("notifications[hook].timeout: ")


@pytest.mark.parametrize("raw", [-5, -0.5])
def test_negative_numbers_are_refused(raw: float) -> None:
    with pytest.raises(ConfigError, match=r"^backoff: must not be negative"):
        parse_duration(raw, "backoff")


def test_nan_is_not_a_duration() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        parse_duration(float("nan"), "timeout")


@pytest.mark.parametrize("setting", ["auth_token_ttl", "gc_grace", "notifications_retention"])
def test_whole_second_settings_refuse_fractions(setting: str) -> None:
    # "1.5s" is a fine duration, but these settings count whole seconds.
    with pytest.raises(ConfigError, match=rf"^{setting}: '1.5s' is not a whole number") as info:
        load_settings({}, {setting: "1.5s"})
    assert "seconds" in str(info.value)


def test_whole_second_settings_take_durations() -> None:
    assert load_settings({}, {"gc_grace": "2d"}).gc_grace == 2 * 86400
    # 1500ms is not whole seconds either: only the sum decides, not the unit.
    with pytest.raises(ConfigError, match="auth_token_ttl"):
        load_settings({}, {"auth_token_ttl": "1500ms"})
    assert load_settings({}, {"auth_token_ttl": "2000ms"}).auth_token_ttl == 2


@pytest.mark.parametrize("raw", [float("inf"), float("nan")])
def test_non_finite_setting_names_the_setting(raw: float) -> None:
    with pytest.raises(ConfigError, match="upload_max_age"):
        load_settings({}, {"upload_max_age": raw})

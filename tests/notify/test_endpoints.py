"""Endpoint settings: distribution's names, defaults and duration syntax; bad values stop
start-up with a message naming the endpoint and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings, parse_duration
from app.context import Features
from app.notifications.endpoints import Endpoint, enabled


def configured(settings: Settings) -> tuple[Endpoint, ...]:
    return Features.from_settings(settings).endpoints


def test_distribution_config_carries_over(tmp_path: Path) -> None:
    config = tmp_path / "berth.toml"
    config.write_text(
        """
[[notifications]]
name = "alistener"
disabled = false
url = "https://my.listener.com/event"
headers = { Authorization = ["Bearer <your token, if needed>"], X-Extra = "one" }
timeout = "500ms"
threshold = 5
backoff = "1m30s"
ignoredmediatypes = ["application/octet-stream"]
ignore = { mediatypes = ["application/vnd.oci.image.index.v1+json"], actions = ["pull"] }

[[notifications]]
name = "second"
url = "http://127.0.0.1:9000/hook"
disabled = true
"""
    )
    settings = load_settings({"BERTH_CONFIG": str(config)})
    first, second = configured(settings)
    assert first.name == "alistener" and first.url == "https://my.listener.com/event"
    assert first.headers == (
        ("Authorization", "Bearer <your token, if needed>"),
        ("X-Extra", "one"),
    )
    assert (first.timeout, first.threshold, first.backoff) == (0.5, 5, 90.0)
    assert first.ignore_mediatypes == {
        "application/octet-stream",
        "application/vnd.oci.image.index.v1+json",
    }
    assert first.ignore_actions == {"pull"}
    # distribution's defaults when unset: 1s timeout, threshold 10, 1s backoff
    assert (second.timeout, second.threshold, second.backoff) == (1.0, 10, 1.0)
    assert second.disabled
    assert [ep.name for ep in enabled(configured(settings))] == ["alistener"]


def test_endpoints_from_the_environment_as_json() -> None:
    raw = [{"name": "ci", "url": "http://ci.local/hook", "timeout": 2, "backoff": "250ms"}]
    settings = load_settings({"BERTH_NOTIFICATIONS": json.dumps(raw)})
    (endpoint,) = configured(settings)
    assert (endpoint.timeout, endpoint.backoff) == (2.0, 0.25)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"url": "http://x/"}, "notifications[0].name: required"),
        ({"name": "a"}, "notifications[a].url: required"),
        ({"name": "a", "url": "ftp://x/"}, "notifications[a].url"),
        ({"name": "a", "url": "http://x/", "timeout": "soon"}, "notifications[a].timeout"),
        ({"name": "a", "url": "http://x/", "backoff": "-1s"}, "notifications[a].backoff"),
        ({"name": "a", "url": "http://x/", "threshold": "ten"}, "notifications[a].threshold"),
        ({"name": "a", "url": "http://x/", "disabled": "yes"}, "notifications[a].disabled"),
        ({"name": "a", "url": "http://x/", "ignore": {"actions": ["push", "x"]}}, "actions"),
        ({"name": "a", "url": "http://x/", "ignore": {"tags": []}}, "notifications[a].ignore"),
        ({"name": "a", "url": "http://x/", "headers": {"A": 1}}, "notifications[a].headers.A"),
        ({"name": "a", "url": "http://x/", "headers": {"A": "x\r\nB: y"}}, "line breaks"),
        ({"name": "a", "url": "http://x/", "retries": 3}, "unknown key(s) retries"),
    ],
)
def test_bad_endpoints_are_refused_by_name(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        configured(load_settings({}, overrides={"notifications": [raw]}))
    assert str(caught.value).startswith("notifications: ")
    assert message in str(caught.value)


def test_duplicate_names_and_bad_json_are_refused() -> None:
    twice = [{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}]
    with pytest.raises(ConfigError, match="unique: a"):
        configured(load_settings({}, overrides={"notifications": twice}))
    with pytest.raises(ConfigError, match="notifications: not valid JSON"):
        load_settings({"BERTH_NOTIFICATIONS": "[{"})
    with pytest.raises(ConfigError, match="notifications_retention"):
        load_settings({"BERTH_NOTIFICATIONS_RETENTION": "soon"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        ("1d", 86400.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)

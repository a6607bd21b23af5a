"""mirror_upstreams parsed once with errors naming the entry and key; names routed onto
upstreams by prefix, containerd's ns and the default upstream; challenges parsed."""

from __future__ import annotations

import json

import pytest

from app.config import ConfigError, load_settings
from app.context import Features
from app.mirror.client import parse_challenge
from app.mirror.upstreams import Upstreams, parse_upstreams, record_interval

HUB = {"prefix": "docker.io", "url": "https://registry-1.docker.io", "default": True}
GHCR = {"prefix": "ghcr.io", "url": "https://ghcr.io/", "ttl": "10m", "read_timeout": 90}


def test_defaults_and_durations() -> None:
    hub, ghcr = parse_upstreams([HUB, GHCR])
    assert (hub.prefix, hub.url, hub.default, hub.ttl) == ("docker.io", HUB["url"], True, 300)
    assert (ghcr.url, ghcr.ttl, ghcr.read_timeout, ghcr.default) == (
        "https://ghcr.io",
        600,
        90,
        False,
    )
    assert "password" not in repr(parse_upstreams([{**GHCR, "username": "u", "password": "s3"}]))


def test_from_the_environment_as_json() -> None:
    settings = load_settings({"BERTH_MIRROR_UPSTREAMS": json.dumps([HUB])})
    assert Features.from_settings(settings).upstreams[0].prefix == "docker.io"


@pytest.mark.parametrize(
    "entries,message",
    [
        ([{"url": "https://x"}], "mirror_upstreams[0].prefix: must be set"),
        ([{"prefix": "Bad Prefix", "url": "https://x"}], "mirror_upstreams[0].prefix:"),
        ([HUB, {"prefix": "q", "url": "ftp://x"}], "mirror_upstreams[1].url:"),
        ([{"prefix": "q", "url": "https://x/v2"}], "mirror_upstreams[0].url: "),
        ([{**GHCR, "ttl": "soon"}], "mirror_upstreams[0].ttl: 'soon' is not a duration"),
        ([{**GHCR, "insecure": "yes"}], "mirror_upstreams[0].insecure: 'yes' is not a boolean"),
        ([{**GHCR, "username": "u"}], "mirror_upstreams[0].password: username and password"),
        ([{**GHCR, "colour": 1}], "mirror_upstreams[0].colour: unknown key"),
        ([{**GHCR, "read_timeout": 0}], "mirror_upstreams[0].read_timeout: must be positive"),
        (
            [GHCR, {**HUB, "prefix": "ghcr.io/x"}],
            "mirror_upstreams[1].prefix: 'ghcr.io/x' overlaps",
        ),
        ([HUB, {**GHCR, "default": True}], "mirror_upstreams[1].default:"),
        (["docker.io"], "mirror_upstreams[0]: expected a table"),
        ([{**GHCR, "retention": "a week"}], "mirror_upstreams[0].retention: 'a week' is not a"),
        (
            [{**GHCR, "retention": "0s"}],
            'mirror_upstreams[0].retention: must be positive, or "off"',
        ),
        ([{**GHCR, "retention_rules": {"x": 1}}], "mirror_upstreams[0].retention_rules: expected"),
        (
            [{**GHCR, "retention_rules": [{"repository": "ghcr.io/*"}]}],
            "mirror_upstreams[0].retention_rules[0].retention: must be set",
        ),
        (
            [{**GHCR, "retention_rules": [{"retention": "1d", "repository": ""}]}],
            "mirror_upstreams[0].retention_rules[0].repository: must be a glob",
        ),
        (
            [{**GHCR, "retention_rules": [{"repository": "a", "retention": "1d", "keep": 1}]}],
            "mirror_upstreams[0].retention_rules[0].keep: unknown key",
        ),
    ],
)
def test_bad_entries_name_the_key(entries: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Features.from_settings(load_settings(overrides={"mirror_upstreams": entries}))
    assert message in str(caught.value)


def test_routing() -> None:
    routes = Upstreams(parse_upstreams([HUB, GHCR]))
    by_prefix = routes.route("ghcr.io/org/tool")
    assert by_prefix is not None and (by_prefix.repo, by_prefix.remote) == (
        "ghcr.io/org/tool",
        "org/tool",
    )
    assert not by_prefix.fallback
    by_ns = routes.route("org/tool", ns="ghcr.io")
    assert by_ns is not None and (by_ns.upstream.prefix, by_ns.repo) == (
        "ghcr.io",
        "ghcr.io/org/tool",
    )
    assert not by_ns.fallback
    default = routes.route("library/alpine")
    assert default is not None and default.fallback and default.repo == "docker.io/library/alpine"
    # Not a prefix by accident: "ghcr.iox/..." is not under "ghcr.io/".
    assert routes.route("ghcr.iox/a").upstream.prefix == "docker.io"  # type: ignore[union-attr]
    assert Upstreams(parse_upstreams([GHCR])).route("library/alpine") is None


def test_challenges() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull,push",
    }
    assert parse_challenge('Basic realm="Registry"').scheme == "basic"
    assert parse_challenge("").scheme == ""


def test_retention_per_upstream_and_per_repository() -> None:
    hub, ghcr = parse_upstreams(
        [
            {
                **HUB,
                "retention": "30d",
                "retention_rules": [
                    {"repository": "docker.io/library/*", "retention": "off"},
                    {"repository": "docker.io/ci/*", "retention": "1d"},
                ],
            },
            GHCR,
        ]
    )
    day = 24 * 3600.0
    assert hub.retention_for("docker.io/team/app") == 30 * day
    assert hub.retention_for("docker.io/library/alpine") is None  # the first match wins
    assert hub.retention_for("docker.io/ci/a/b") == day  # `*` crosses `/`
    assert hub.retains and not ghcr.retains and ghcr.retention_for("ghcr.io/x") is None
    # Only rules can retain too: an upstream kept for ever but for one glob.
    (only_rules,) = parse_upstreams(
        [{**GHCR, "retention_rules": [{"repository": "ghcr.io/tmp/*", "retention": 3600}]}]
    )
    assert only_rules.retains and only_rules.retention_for("ghcr.io/tmp/x") == 3600


def test_pull_records_are_rarer_than_the_retention() -> None:
    assert record_interval(None) == 3600 and record_interval(30 * 86400) == 3600
    assert record_interval(60) == 6  # a tenth of a short retention

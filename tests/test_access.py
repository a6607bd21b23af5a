"""The access rules as pure functions, their configuration, and `berth user`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.auth import tokens, users
from app.auth.policy import ACTIONS, Policy
from app.auth.throttle import FailureLimiter
from app.cli import main
from app.config import ConfigError, load_settings
from app.context import Features
from app.db import Database
from app.migrate import upgrade

# Distribution's Apache sample ("Hosting mode access"), written as Berth configuration:
# every valid user may fetch images, only the docker-deployer account may push them.
APACHE_SAMPLE = """
auth = "basic"

[[auth_rules]]
repository = "*"
users = ["*"]
actions = ["pull"]

[[auth_rules]]
repository = "*"
users = ["docker-deployer"]
actions = ["push"]
"""


def settings_from(tmp_path: Path, text: str, **env: str):
    config = tmp_path / "berth.toml"
    config.write_text(text)
    return load_settings({"BERTH_CONFIG": str(config), **env})


def test_apache_sample_policy(tmp_path: Path) -> None:
    policy = Policy.from_settings(settings_from(tmp_path, APACHE_SAMPLE))
    for repo in ("app", "team/app", "a/b/c"):
        assert policy.allowed("docker-deployer", repo) == {"pull", "push"}
        assert policy.allowed("alice", repo) == {"pull"}
        assert policy.allowed(None, repo) == frozenset()  # no account, no images
        assert not policy.may("alice", repo, ["pull", "push"])


def test_globs_groups_and_admins(tmp_path: Path) -> None:
    text = """
auth = "basic"
auth_anonymous_pull = false
auth_admins = { groups = ["ops"] }

[auth_groups]
team = ["alice", "bob"]
ops = ["carol"]

[[auth_rules]]
repository = "team/*"
groups = ["team"]
actions = ["pull", "push"]

[[auth_rules]]
repository = "team/releases/*"
users = ["bob"]
actions = ["delete"]
"""
    policy = Policy.from_settings(settings_from(tmp_path, text))
    assert policy.allowed("alice", "team/app") == {"pull", "push"}
    assert policy.allowed("alice", "team/releases/v1") == {"pull", "push"}  # `*` crosses `/`
    assert policy.allowed("bob", "team/releases/v1") == {"pull", "push", "delete"}
    assert policy.allowed("alice", "teamwork") == frozenset()
    assert policy.allowed("dave", "team/app") == frozenset()
    assert policy.allowed("carol", "anything") == ACTIONS
    assert policy.is_admin("carol") and not policy.is_admin("alice") and not policy.is_admin(None)
    assert not policy.pulls_everything("alice") and policy.pulls_everything("carol")


def test_anonymous_pull_switch() -> None:
    policy = Policy.from_settings(load_settings({}, {"auth": "basic", "auth_anonymous_pull": True}))
    assert policy.allowed(None, "x") == {"pull"}
    assert policy.allowed("someone", "x") == {"pull"}


def test_rules_from_the_environment_as_json() -> None:
    rules = [{"repository": "*", "users": ["ci"], "actions": ["*"]}]
    settings = load_settings({"BERTH_AUTH": "token", "BERTH_AUTH_RULES": json.dumps(rules)})
    assert Policy.from_settings(settings).allowed("ci", "x") == ACTIONS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"auth": "ldap"}, "auth: 'ldap' is not one of none, basic, token"),
        ({"auth_rules": [{"repository": "*", "users": ["a"], "actions": ["fly"]}]}, "actions"),
        ({"auth_rules": [{"repository": "*", "actions": ["pull"]}]}, "no `users`"),
        ({"auth_rules": [{"users": ["a"], "actions": ["pull"]}]}, "repository"),
        ({"auth_rules": [{"repository": "*", "user": ["a"], "actions": ["pull"]}]}, "user"),
        ({"auth_rules": ["*"]}, "expected a table"),
        ({"auth_groups": {"team": "alice"}}, None),
        ({"auth_groups": {"team": [1]}}, "auth_groups.team"),
        ({"auth_admins": {"people": ["root"]}}, "auth_admins"),
        ({"auth_token_ttl": "0"}, "auth_token_ttl"),
        ({"auth_realm": 'say "hi"'}, "auth_realm"),
    ],
)
def test_bad_auth_settings_stop_start_up(overrides: dict, message: str | None) -> None:
    if message is None:  # a single name where a list is expected is accepted
        Features.from_settings(load_settings({}, overrides))
        return
    with pytest.raises(ConfigError, match=message):
        Features.from_settings(load_settings({}, overrides))


def test_scopes_parse() -> None:
    scopes = tokens.parse_scopes(["repository:team/app:pull,push registry:catalog:*"])
    assert [str(s) for s in scopes] == ["repository:team/app:pull,push", "registry:catalog:*"]
    plugin = tokens.parse_scopes(["repository(plugin):a/b:pull"])[0]
    assert (plugin.type, plugin.name) == ("repository", "a/b")
    with pytest.raises(tokens.ScopeInvalid):
        tokens.parse_scopes(["repository"])


def test_failure_limiter_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/limits.db"
    upgrade(url)
    db = Database(url)
    limiter = FailureLimiter(db, limit=2, window=0.4)
    limiter.fail("a", "alice")
    assert limiter.retry_after("a", "alice") is None
    limiter.fail("a", "alice")
    assert limiter.retry_after("a", "alice") == 1
    assert limiter.retry_after("b", "alice") is None  # the owner, from elsewhere
    assert limiter.retry_after("a", "bob") is None  # another name, from the same address
    # Many names from one address: stopped at 3 x the limit, whatever the name.
    for name in ("c", "d", "e", "f"):
        limiter.fail("a", name)
    assert limiter.retry_after("a", "zed") == 1
    # Another limiter on the same database (another worker) counts the same failures.
    assert FailureLimiter(db, limit=2, window=0.4).retry_after("a", "alice") == 1
    time.sleep(0.45)
    assert limiter.retry_after("a", "alice") is None
    db.dispose()


def test_credential_cache_expires_and_forgets() -> None:
    cache = users.CredentialCache(ttl=0.2)
    cache.remember("alice", "pw")
    assert cache.hit("alice", "pw") and not cache.hit("alice", "other")
    users.forget("alice")  # what passwd and delete call
    assert not cache.hit("alice", "pw")
    cache.remember("alice", "pw")
    time.sleep(0.25)
    assert not cache.hit("alice", "pw")
    assert not users.CredentialCache(ttl=0).hit("alice", "pw")


def test_user_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("BERTH_DATABASE_URL", url)
    monkeypatch.delenv("BERTH_CONFIG", raising=False)
    runner = CliRunner()

    def berth(*args: str, stdin: str | None = None):
        return runner.invoke(main, list(args), input=stdin)

    added = berth("user", "add", "alice", "--password-stdin", "--cost", "4", stdin="s3cret\n")
    assert added.exit_code == 0, added.output
    prompted = berth("user", "add", "bob", "--cost", "4", stdin="pw\npw\n")
    assert prompted.exit_code == 0, prompted.output
    assert berth("user", "add", "alice", "--password-stdin", stdin="x\n").exit_code != 0
    assert "already exists" in berth("user", "add", "alice", "--password-stdin", stdin="x\n").output
    assert "not be empty" in berth("user", "add", "carol", "--password-stdin", stdin="\n").output
    assert "letters, digits" in berth("user", "add", "a:b", "--password-stdin", stdin="x\n").output
    assert berth("user", "list").output.split() == ["alice", "bob"]

    from app import create_app

    upgrade(url)
    app = create_app({"database_url": url, "storage_driver": "inmemory", "auth": "basic"})
    auth = app.extensions["berth"].guard.authenticator
    assert auth.verify("alice", "s3cret") and not auth.verify("alice", "wrong")
    assert berth("user", "passwd", "alice", "--password-stdin", stdin="n3w\n").exit_code == 0
    assert auth.verify("alice", "n3w") and auth.lookup("alice").startswith("$2b$12$")
    assert berth("user", "delete", "bob").exit_code == 0
    assert "no user 'bob'" in berth("user", "delete", "bob").output
    assert berth("user", "list").output.split() == ["alice"]
    app.extensions["berth"].db.dispose()

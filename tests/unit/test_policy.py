"""Who may pull, push and delete (the auth_* settings as a Policy), and the bearer tokens
that carry it: a token grants what the rules allow of the request, never more, and /v2
takes only tokens this registry signed, for this service, still in date.

tests/test_access.py covers the configuration examples; this covers the rules' corners."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from app.auth import tokens
from app.auth.policy import ACTIONS, Policy
from app.config import ConfigError, load_settings

NOTHING: frozenset[str] = frozenset()


def policy(**overrides: Any) -> Policy:
    return Policy.from_settings(load_settings({}, overrides))


def rule(repository: str, actions: list[str], **who: list[str]) -> dict[str, Any]:
    return {"repository": repository, "actions": actions, **who}


# --------------------------------------------------------------------------- rules


def test_nothing_is_granted_without_a_rule() -> None:
    empty = policy()
    assert empty.allowed("alice", "app") == NOTHING
    assert empty.allowed(None, "app") == NOTHING
    assert not empty.may("alice", "app", ["pull"])
    assert not empty.pulls_everything("alice")


def test_rules_for_a_user_and_their_groups_add_up() -> None:
    p = policy(
        auth_groups={"dev": ["alice"]},
        auth_rules=[
            rule("app", ["pull"], users=["alice"]),
            rule("app", ["push"], groups=["dev"]),
            rule("a*", ["delete"], users=["*"]),
            rule("other", ["push"], users=["alice"]),  # another repository: no effect
        ],
    )
    assert p.allowed("alice", "app") == {"pull", "push", "delete"}
    assert p.may("alice", "app", ["pull", "push"])
    assert p.allowed("bob", "app") == {"delete"}  # only the "*" rule reaches bob


def test_user_in_several_groups_gets_every_groups_rules() -> None:
    p = policy(
        auth_groups={"readers": ["alice", "bob"], "writers": ["alice"]},
        auth_rules=[
            rule("*", ["pull"], groups=["readers"]),
            rule("*", ["push"], groups=["writers"]),
        ],
    )
    assert p.allowed("alice", "x") == {"pull", "push"}
    assert p.allowed("bob", "x") == {"pull"}


def test_rule_for_an_unknown_group_grants_nobody() -> None:
    p = policy(auth_rules=[rule("*", ["pull"], groups=["ghosts"])])
    assert p.allowed("ghosts", "x") == NOTHING  # a user named like the group is not in it


@pytest.mark.parametrize(
    ("pattern", "repository", "matches"),
    [
        ("*", "a/b/c", True),  # `*` crosses `/`
        ("team/*", "team/a/b", True),
        ("team/*", "team", False),
        ("team/*", "teams/a", False),
        ("*/app", "x/y/app", True),
        ("*/app", "app", False),
        ("app", "app", True),
        ("app", "app/sub", False),  # a plain name is exact, not a prefix
        ("app", "myapp", False),
        ("v?/app", "v1/app", True),
        ("v?/app", "v10/app", False),
        ("[ab]/*", "b/x", True),
        ("[ab]/*", "c/x", False),
        ("Team/*", "team/app", False),  # case-sensitive, whatever the OS
    ],
)
def test_glob_patterns(pattern: str, repository: str, matches: bool) -> None:
    p = policy(auth_rules=[rule(pattern, ["pull"], users=["alice"])])
    assert p.may("alice", repository, ["pull"]) is matches


def test_star_actions_and_single_names() -> None:
    # A single string where a list is expected is read as a list of one.
    p = policy(auth_rules=[{"repository": "*", "users": "ci", "actions": "*"}])
    assert p.allowed("ci", "anything") == ACTIONS
    assert p.allowed("cid", "anything") == NOTHING


def test_admins_by_name_get_everything_everywhere() -> None:
    p = policy(auth_admins={"users": ["root"]}, auth_rules=[rule("app", ["pull"], users=["bob"])])
    assert p.is_admin("root")
    assert p.allowed("root", "never/mentioned") == ACTIONS
    assert p.pulls_everything("root")
    assert not p.is_admin("bob")
    assert not p.is_admin(None)


def test_admin_group_membership() -> None:
    p = policy(auth_groups={"ops": ["carol"]}, auth_admins={"groups": "ops"})
    assert p.is_admin("carol") and not p.is_admin("ops")


def test_anonymous_pull_gives_pull_and_only_pull() -> None:
    p = policy(auth_anonymous_pull=True, auth_rules=[rule("app", ["push"], users=["alice"])])
    assert p.allowed(None, "app") == {"pull"}
    assert not p.may(None, "app", ["push"])
    # Rules still add to what a signed-in user may do; anonymous pull is not taken away.
    assert p.allowed("alice", "app") == {"pull", "push"}
    assert p.allowed("bob", "app") == {"pull"}
    assert p.pulls_everything(None) and p.pulls_everything("bob")


@pytest.mark.parametrize(
    ("rules", "everything"),
    [
        ([rule("*", ["pull"], users=["*"])], True),
        ([rule("*", ["pull"], users=["alice"])], True),
        ([rule("*", ["*"], groups=["dev"])], True),
        ([rule("*", ["push"], users=["alice"])], False),  # may push, not see
        ([rule("team/*", ["pull"], users=["alice"])], False),
        ([rule("*", ["pull"], users=["bob"])], False),
    ],
)
def test_pulls_everything_decides_whether_the_catalog_is_filtered(
    rules: list[dict], everything: bool
) -> None:
    p = policy(auth_groups={"dev": ["alice"]}, auth_rules=rules)
    assert p.pulls_everything("alice") is everything
    assert not p.pulls_everything(None)


@pytest.mark.parametrize(
    ("rules", "where"),
    [
        ([rule("*", [], users=["a"])], r"auth_rules\[0\]\.actions"),
        ([rule("*", ["pull", "admin"], users=["a"])], r"auth_rules\[0\]\.actions"),
        ([rule("*", [1], users=["a"])], r"auth_rules\[0\]\.actions"),  # type: ignore[list-item]
        ([rule("*", ["pull"], users=[""])], r"auth_rules\[0\]\.users"),
        ([rule("*", ["pull"], groups=[["dev"]])], r"auth_rules\[0\]\.groups"),  # type: ignore
        ([{"repository": "", "users": ["a"], "actions": ["pull"]}], r"auth_rules\[0\]: `repo"),
        ([{"repository": 7, "users": ["a"], "actions": ["pull"]}], r"auth_rules\[0\]: `repo"),
        ([rule("*", ["pull"], users=["a"]), rule("*", ["pull"])], r"auth_rules\[1\]: names no"),
        ([rule("*", ["pull"], users=["a"]), 5], r"auth_rules\[1\]: expected a table"),
    ],
)
def test_bad_rule_is_named_by_its_position(rules: list[Any], where: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{where}"):
        policy(auth_rules=rules)


@pytest.mark.parametrize("users", [5, {"root": True}, [None]])
def test_bad_admin_list(users: Any) -> None:
    with pytest.raises(ConfigError, match=r"^auth_admins\.users"):
        policy(auth_admins={"users": users})


# --------------------------------------------------------------------------- tokens

KEY = tokens._from_pem(tokens.generate_pem().encode())
OTHER_KEY = tokens._from_pem(tokens.generate_pem().encode())
ISSUER, SERVICE = "berth", "registry.example"
ACCESS = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]


def sign(key: tokens.SigningKey = KEY, **fields: Any) -> str:
    values: dict[str, Any] = {"issuer": ISSUER, "service": SERVICE, "ttl": 300, "subject": "alice"}
    values["access"] = ACCESS
    values.update(fields)
    token, _ = tokens.issue(key, **values)
    return token


def verify(token: str, key: tokens.SigningKey = KEY) -> tokens.Claims:
    return tokens.verify(key, ISSUER, SERVICE, token)


def test_issue_then_verify_round_trip() -> None:
    now = time.time()
    token, issued = tokens.issue(KEY, ISSUER, SERVICE, 300, "alice", ACCESS, now=now)
    claims = verify(token)
    assert claims.subject == "alice"
    assert claims.actions("repository", "team/app") == {"pull", "push"}
    assert claims.actions("repository", "team/other") == NOTHING
    assert int(issued.timestamp()) == int(now)
    # distribution finds the verifying key by this header.
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("ES256", KEY.kid)


def test_anonymous_token_has_no_subject() -> None:
    assert verify(sign(subject=None, access=[])).subject is None


def test_repeated_access_entries_are_merged() -> None:
    access = [
        {"type": "repository", "name": "a", "actions": ["pull"]},
        {"type": "repository", "name": "a", "actions": ["push"]},
    ]
    assert verify(sign(access=access)).actions("repository", "a") == {"pull", "push"}


def test_expired_token_is_refused() -> None:
    # Issued an hour ago with five minutes to live: well past the clock-skew leeway.
    with pytest.raises(tokens.TokenInvalid, match="expired"):
        verify(sign(now=time.time() - 3600))


def test_expiry_allows_a_little_clock_skew() -> None:
    # Expired 5 seconds ago by this clock: another instance's clock may be behind.
    assert verify(sign(now=time.time() - 305)).subject == "alice"


def test_token_from_the_future_is_refused() -> None:
    with pytest.raises(tokens.TokenInvalid):
        verify(sign(now=time.time() + 3600))


@pytest.mark.parametrize(
    ("issuer", "service"), [(ISSUER, "other-registry"), ("someone-else", SERVICE)]
)
def test_token_for_another_service_or_issuer_is_refused(issuer: str, service: str) -> None:
    token = sign(issuer=issuer, service=service)
    with pytest.raises(tokens.TokenInvalid):
        verify(token)


def test_token_signed_by_another_key_is_refused() -> None:
    with pytest.raises(tokens.TokenInvalid):
        verify(sign(OTHER_KEY))


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_tampered_access_claim_is_refused() -> None:
    header, payload, signature = sign(access=[]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["access"] = [{"type": "repository", "name": "*", "actions": ["*"]}]
    with pytest.raises(tokens.TokenInvalid):
        verify(f"{header}.{_b64(claims)}.{signature}")


def test_unsigned_token_is_refused() -> None:
    # `alg: none` must not be taken at its word.
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "root", "iat": now, "exp": now + 300}
    unsigned = jwt.encode({**claims, "access": ACCESS}, "", algorithm="none")
    with pytest.raises(tokens.TokenInvalid):
        verify(unsigned)


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub"])
def test_token_missing_a_required_claim_is_refused(missing: str) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "alice", "iat": now, "exp": now + 300}
    del claims[missing]
    token = jwt.encode(claims, KEY.private_key, algorithm=KEY.algorithm)
    with pytest.raises(tokens.TokenInvalid):
        verify(token)


@pytest.mark.parametrize(
    "access",
    [
        "repository:app:pull",
        [{"type": "repository", "name": "app"}],
        [{"type": "repository", "name": "app", "actions": [1]}],
        [{"type": "repository", "name": 5, "actions": ["pull"]}],
        ["repository:app:pull"],
    ],
)
def test_malformed_access_claim_is_refused(access: Any) -> None:
    with pytest.raises(tokens.TokenInvalid, match="access"):
        verify(sign(access=access))


# --------------------------------------------------------------------------- grants


def scopes(*texts: str) -> list[tokens.Scope]:
    return tokens.parse_scopes(texts)


TEAM = policy(
    auth_groups={"dev": ["alice"]},
    auth_rules=[
        rule("team/*", ["pull", "push"], groups=["dev"]),
        rule("public/*", ["pull"], users=["*"]),
    ],
)


def test_grant_cuts_scopes_down_to_the_rules() -> None:
    access = tokens.grant(TEAM, "alice", scopes("repository:team/app:pull,push,delete"))
    assert access == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]


def test_grant_star_means_whatever_is_allowed() -> None:
    access = tokens.grant(TEAM, "bob", scopes("repository:public/x:*"))
    assert access == [{"type": "repository", "name": "public/x", "actions": ["pull"]}]


def test_grant_leaves_out_what_is_not_allowed_at_all() -> None:
    requested = scopes("repository:secret/x:pull", "repository:team/app:pull", "repository:a:")
    access = tokens.grant(TEAM, "bob", requested)
    assert access == []  # bob is not in dev: no entry at all, not an empty one
    assert tokens.grant(TEAM, None, requested) == []


def test_grant_never_exceeds_the_policy() -> None:
    requested = scopes(
        "repository:team/app:pull,push,delete",
        "repository:team/app:*",
        "repository:public/x:push,delete",
        "repository:elsewhere:*",
    )
    for user in ("alice", "bob", None):
        for entry in tokens.grant(TEAM, user, requested):
            assert set(entry["actions"]) <= TEAM.allowed(user, entry["name"])


def test_grant_merges_repeated_scopes() -> None:
    access = tokens.grant(
        TEAM, "alice", scopes("repository:team/app:pull", "repository:team/app:push")
    )
    assert access == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]


def test_grant_ignores_unknown_resource_types() -> None:
    assert tokens.grant(TEAM, "alice", scopes("registry:config:*", "plugin:x:pull")) == []


def test_catalog_scope_only_for_authenticated_users() -> None:
    catalog = scopes("registry:catalog:*")
    assert tokens.grant(TEAM, "bob", catalog) == [
        {"type": "registry", "name": "catalog", "actions": ["*"]}
    ]
    assert tokens.grant(TEAM, None, catalog) == []
    assert tokens.grant(TEAM, "bob", scopes("registry:catalog:")) == []  # nothing asked


def test_catalog_scope_for_anonymous_callers_with_anonymous_pull() -> None:
    open_pull = policy(auth_anonymous_pull=True)
    access = tokens.grant(open_pull, None, scopes("registry:catalog:*"))
    assert access == [{"type": "registry", "name": "catalog", "actions": ["*"]}]


def test_granted_access_survives_the_token() -> None:
    # What the token endpoint does end to end: grant, issue, and /v2 reads it back.
    access = tokens.grant(TEAM, "alice", scopes("repository:team/app:*", "repository:x:pull"))
    claims = verify(sign(access=access))
    assert claims.actions("repository", "team/app") == {"pull", "push"}
    assert claims.actions("repository", "x") == NOTHING

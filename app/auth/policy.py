"""Who may do what: the access rules of the auth_* settings, as pure functions.

A rule grants actions on the repositories matching a glob to users and groups:

    [[auth_rules]]
    repository = "team/*"          # fnmatch glob; `*` also crosses `/`
    groups = ["team"]              # members listed in [auth_groups]
    users = ["ci"]                 # "*" means every valid user
    actions = ["pull", "push"]     # pull, push, delete, or "*" for all three

What a caller may do on a repository is the union of every matching rule; nothing is
granted unless a rule says so. Admins (auth_admins) may do everything, and they alone
may use the /api/ endpoints. Anonymous callers may pull everything when
auth_anonymous_pull is on, and nothing else.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.config import ConfigError, Settings

ACTIONS = frozenset({"pull", "push", "delete"})
ANY_USER = "*"
_RULE_KEYS = {"repository", "users", "groups", "actions"}


@dataclass(frozen=True)
class Rule:
    pattern: str
    users: frozenset[str]
    groups: frozenset[str]
    actions: frozenset[str]

    def matches(self, repository: str) -> bool:
        return fnmatch.fnmatchcase(repository, self.pattern)

    def applies_to(self, user: str, groups: frozenset[str]) -> bool:
        return ANY_USER in self.users or user in self.users or not self.groups.isdisjoint(groups)


@dataclass(frozen=True)
class Policy:
    anonymous_pull: bool
    rules: tuple[Rule, ...]
    members: Mapping[str, frozenset[str]]  # group -> user names
    admin_users: frozenset[str]
    admin_groups: frozenset[str]

    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset(group for group, names in self.members.items() if user in names)

    def is_admin(self, user: str | None) -> bool:
        if user is None:
            return False
        return user in self.admin_users or not self.admin_groups.isdisjoint(self.groups_of(user))

    def allowed(self, user: str | None, repository: str) -> frozenset[str]:
        """Every action `user` (None: anonymous) may take on `repository`."""
        if user is None:
            return frozenset({"pull"}) if self.anonymous_pull else frozenset()
        if self.is_admin(user):
            return ACTIONS
        groups = self.groups_of(user)
        granted: set[str] = {"pull"} if self.anonymous_pull else set()
        for rule in self.rules:
            if rule.matches(repository) and rule.applies_to(user, groups):
                granted |= rule.actions
        return frozenset(granted)

    def may(self, user: str | None, repository: str, actions: Iterable[str]) -> bool:
        return set(actions) <= self.allowed(user, repository)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The auth_* settings' policy; a bad rule raises ConfigError naming it. Built once,
        by the composition root: it never changes at run time."""
        members: dict[str, frozenset[str]] = {}
        for group, names in settings.auth_groups.items():
            members[group] = _names(f"auth_groups.{group}", names)
        admins = settings.auth_admins
        unknown = set(admins) - {"users", "groups"}
        if unknown:
            raise ConfigError(f"auth_admins: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(
            anonymous_pull=settings.auth_anonymous_pull,
            rules=tuple(_rule(i, raw) for i, raw in enumerate(settings.auth_rules)),
            members=members,
            admin_users=_names("auth_admins.users", admins.get("users", [])),
            admin_groups=_names("auth_admins.groups", admins.get("groups", [])),
        )

    def pulls_everything(self, user: str | None) -> bool:
        """True when no repository can be hidden from `user` (the catalog needs no filter)."""
        if self.anonymous_pull or self.is_admin(user):
            return True
        if user is None:
            return False
        groups = self.groups_of(user)
        return any(
            rule.pattern == "*" and "pull" in rule.actions and rule.applies_to(user, groups)
            for rule in self.rules
        )


def _names(where: str, raw: Any) -> frozenset[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(f"{where}: expected a list of names, got {raw!r}")
    return frozenset(raw)


def _rule(index: int, raw: Any) -> Rule:
    where = f"auth_rules[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    pattern = raw.get("repository")
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f'{where}: `repository` must be a glob such as "team/*"')
    actions = _names(f"{where}.actions", raw.get("actions", []))
    if "*" in actions:
        actions = ACTIONS
    if not actions or not actions <= ACTIONS:
        raise ConfigError(f'{where}.actions: must be some of pull, push, delete (or "*")')
    users = _names(f"{where}.users", raw.get("users", []))
    groups = _names(f"{where}.groups", raw.get("groups", []))
    if not users and not groups:
        raise ConfigError(f"{where}: names no `users` and no `groups`")
    return Rule(pattern, users, groups, actions)

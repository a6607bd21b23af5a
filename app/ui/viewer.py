"""Who is looking at the UI and what they may do: the registry's own access policy
(app/auth/policy.py, the rules the API obeys), never a second copy of the rules."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from app.auth.guard import Access, Caller, Guard
from app.auth.policy import ACTIONS
from app.errors import Denied, Unauthorized

# What the UI changes: deleting. Pushing stays with the registry clients.
CHANGES = frozenset({"delete"})


@dataclass(frozen=True)
class Viewer:
    guard: Guard | None  # None: auth = "none", the UI is as open as the API
    user: str | None  # None: anonymous
    csrf_token: str  # what every state-changing form of this viewer must carry
    read_only: bool  # ui = "read-only", or delete_enabled = false

    @property
    def auth_on(self) -> bool:
        return self.guard is not None

    @property
    def logged_in(self) -> bool:
        return self.user is not None

    @property
    def admin(self) -> bool:
        """Registry-wide pages (gc figures, webhook status) are for administrators."""
        return self.guard is None or self.guard.policy.is_admin(self.user)

    def actions(self, repository: str) -> frozenset[str]:
        # The policy rather than guard.allowed: in token mode that also wants a token's
        # scope, and a UI session is the user's own login, as at the token endpoint.
        granted = (
            ACTIONS if self.guard is None else self.guard.policy.allowed(self.user, repository)
        )
        return granted - CHANGES if self.read_only else granted

    def may(self, repository: str, action: str) -> bool:
        return action in self.actions(repository)

    def require(self, repository: str, action: str) -> None:
        if self.may(repository, action):
            return
        if self.user is None and self.guard is not None:
            raise Unauthorized(message="log in first")
        raise Denied(
            {"repository": repository, "actions": [action]},
            message=f"you may not {action} {repository}",
        )

    def require_admin(self) -> None:
        if self.admin:
            return
        if self.user is None:
            raise Unauthorized(message="log in first")
        raise Denied(message="administrators only")

    def visible(self) -> Callable[[str], bool] | None:
        """None when every repository is visible, else the test for one name (the catalog's)."""
        return Access(
            self.guard, Caller(self.user, authenticated=self.user is not None)
        ).catalog_filter()

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented or "", self.csrf_token)

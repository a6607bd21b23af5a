"""Access control: the policy of the auth_* settings, accounts, tokens, the failed-login
throttle, and the guard that decides each request. Never imports flask."""

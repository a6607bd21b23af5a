"""`berth serve` logs one line per request by default; access_log = false turns that off."""

from __future__ import annotations

import requests

from tests.e2e.conftest import StartServer


def test_access_log_on_by_default_and_off_when_asked(
    berth_server_factory: StartServer,
) -> None:
    logged = berth_server_factory(name="logged")
    quiet = berth_server_factory(env={"BERTH_ACCESS_LOG": "false"}, name="quiet")
    for server in (logged, quiet):
        requests.get(f"{server.url}/v2/_catalog?marker=access-log-check", timeout=10)
    logged.stop()
    quiet.stop()
    assert '"GET /v2/_catalog?marker=access-log-check HTTP/1.1" 200' in logged.log()
    assert "access-log-check" not in quiet.log()
    assert "Starting gunicorn" in quiet.log()  # the log itself is there, just no access lines

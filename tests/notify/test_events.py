"""Events through the HTTP API, delivered to a real receiver: one of each kind, each
envelope checked field by field, filters, disabled endpoints, order, outages of one endpoint,
and the outbox sharing the change's transaction. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from app.db.models import Manifest, NotificationEvent
from app.notifications import delivery as notify
from app.notifications.events import BLOB_MEDIA_TYPE
from tests.helpers import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256
from tests.notify.conftest import MakeRegistry
from tests.notify.envelope import check_envelope
from tests.notify.receiver import Receiver


def _drain(reg, timeout: float = 20.0) -> None:
    """Deliver until nothing is pending (waiting out any backoff)."""
    deliverer = notify.Deliverer(reg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliverer.deliver_once()
        if not any(c["pending"] for c in notify.counts(reg).values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"still pending after {timeout}s: {notify.counts(reg)}")


def _summary(event: dict) -> tuple:
    target = event["target"]
    return (
        event["action"],
        target["repository"],
        target.get("digest"),
        target.get("tag"),
        target.get("mediaType"),
    )


def test_every_event_arrives_with_a_valid_envelope(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    reg, registry = make_registry(
        [{"name": "all", "url": receiver.url(), "headers": {"Authorization": ["Bearer s3cret"]}}]
    )
    http = registry.http
    image = registry.push_image("team/app", "v1", layers=2)
    config, (layer0, layer1) = sha256(image.config), [sha256(b) for b in image.layers]
    assert http.get("/v2/team/app/manifests/v1").status_code == 200
    assert http.head("/v2/team/app/manifests/v1").status_code == 200  # HEAD is not a pull
    etag = {"If-None-Match": f'"{image.digest}"'}
    assert http.get("/v2/team/app/manifests/v1", headers=etag).status_code == 304
    assert http.get(f"/v2/team/app/blobs/{layer0}").status_code == 200
    assert http.head(f"/v2/team/app/blobs/{layer0}").status_code == 200
    ranged = http.get(f"/v2/team/app/blobs/{layer0}", headers={"Range": "bytes=10-"})
    assert ranged.status_code == 206  # the rest of a download already counted
    mounted = http.post(f"/v2/other/app/blobs/uploads/?mount={layer0}&from=team/app")
    assert mounted.status_code == 201
    index = registry.push_index("team/app", "multi", [image])
    assert http.delete("/v2/team/app/manifests/v1").status_code == 202
    assert registry.put_manifest("team/app", "v2", image.manifest).status_code == 201
    assert http.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
    assert http.delete(f"/v2/team/app/blobs/{layer1}").status_code == 202

    _drain(reg)
    blob, manifest = BLOB_MEDIA_TYPE, OCI_MANIFEST
    expected = [
        ("push", "team/app", config, None, blob),
        ("push", "team/app", layer0, None, blob),
        ("push", "team/app", layer1, None, blob),
        ("push", "team/app", image.digest, "v1", manifest),
        ("pull", "team/app", image.digest, "v1", manifest),
        ("pull", "team/app", layer0, None, blob),
        ("mount", "other/app", layer0, None, blob),
        ("push", "team/app", index, "multi", OCI_INDEX),
        ("delete", "team/app", None, "v1", None),
        ("push", "team/app", image.digest, "v2", manifest),
        ("delete", "team/app", image.digest, None, manifest),
        ("delete", "team/app", None, "v2", None),
        ("delete", "team/app", layer1, None, blob),
    ]
    received = receiver.events()
    assert [_summary(e) for e in received] == expected
    for request in receiver.delivered():
        assert check_envelope(request.headers, request.json()) == []
        assert request.headers["Authorization"] == "Bearer s3cret"
    assert len({e["id"] for e in received}) == len(received)

    by_action = {(e["action"], e["target"].get("digest")): e for e in received}
    push = by_action[("push", image.digest)]["target"]
    assert push["size"] == push["length"] == len(image.manifest)
    assert push["url"] == f"http://localhost/v2/team/app/manifests/{image.digest}"
    assert [r["digest"] for r in push["references"]] == [config, layer0, layer1]
    assert by_action[("push", index)]["target"]["references"][0]["digest"] == image.digest
    layer_push = by_action[("push", layer0)]["target"]
    assert layer_push["size"] == len(image.layers[0])
    assert by_action[("mount", layer0)]["target"]["fromRepository"] == "team/app"
    pull = by_action[("pull", image.digest)]
    assert pull["request"]["method"] == "GET"
    assert pull["request"]["addr"] == "10.1.2.3"
    assert pull["request"]["useragent"] == "berth-tests/1.0"
    assert pull["request"]["host"] == "localhost"
    assert pull["actor"] == {"name": "alice"}
    assert all(e["target"].get("fromRepository") is None for e in received[:6])
    assert notify.counts(reg) == {"all": {"pending": 0, "sent": len(expected), "failed": 0}}


def test_request_id_of_the_change_is_in_its_event(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    reg, registry = make_registry([{"name": "all", "url": receiver.url()}])
    body = b"some layer"
    response = registry.http.post(
        f"/v2/a/blobs/uploads/?digest={sha256(body)}", data=body, headers={"X-Request-Id": "r-42"}
    )
    assert response.status_code == 201
    _drain(reg)
    (event,) = receiver.events()
    assert event["request"]["id"] == "r-42"
    assert event["request"]["method"] == "POST"


def test_ignore_filters_and_disabled_endpoints(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    reg, registry = make_registry(
        [
            {"name": "all", "url": receiver.url("/all")},
            {
                "name": "no-blobs",
                "url": receiver.url("/no-blobs"),
                "ignore": {"mediatypes": [BLOB_MEDIA_TYPE]},
            },
            {"name": "no-pulls", "url": receiver.url("/no-pulls"), "ignore": {"actions": ["pull"]}},
            {"name": "legacy", "url": receiver.url("/legacy"), "ignoredmediatypes": [OCI_MANIFEST]},
            {"name": "off", "url": receiver.url("/off"), "disabled": True},
        ]
    )
    image = registry.push_image("team/app", "v1", layers=1)
    assert registry.http.get("/v2/team/app/manifests/v1").status_code == 200
    assert registry.http.get(f"/v2/team/app/blobs/{sha256(image.config)}").status_code == 200
    _drain(reg)

    def actions(path: str) -> list[tuple[str, str]]:
        return [(e["action"], e["target"]["mediaType"]) for e in receiver.events(path)]

    blob, manifest = BLOB_MEDIA_TYPE, OCI_MANIFEST
    assert actions("/all") == [
        ("push", blob),
        ("push", blob),
        ("push", manifest),
        ("pull", manifest),
        ("pull", blob),
    ]
    assert actions("/no-blobs") == [("push", manifest), ("pull", manifest)]
    assert actions("/no-pulls") == [("push", blob), ("push", blob), ("push", manifest)]
    assert actions("/legacy") == [("push", blob), ("push", blob), ("pull", blob)]
    assert receiver.events("/off") == []
    figures = notify.counts(reg)
    assert figures["off"] == {"pending": 0, "sent": 0, "failed": 0}  # nothing queued for it
    assert figures["no-blobs"]["sent"] == 2
    states = {entry["name"]: entry["state"] for entry in notify.status(reg)}
    assert states["off"] == "disabled" and states["all"] == "enabled"


def test_nothing_recorded_without_endpoints(make_registry: MakeRegistry) -> None:
    reg, registry = make_registry([])
    registry.push_image("team/app", "v1")
    with reg.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(NotificationEvent)) == 0


def test_one_endpoint_down_does_not_hold_back_another_and_order_holds(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    reg, registry = make_registry(
        [
            {"name": "up", "url": receiver.url("/up")},
            {"name": "flaky", "url": receiver.url("/flaky"), "threshold": 2, "backoff": "50ms"},
        ]
    )
    receiver.status_by_path["/flaky"] = 503
    image = registry.push_image("team/app", layers=1)
    tags = [f"t{i:02d}" for i in range(45)]  # more than two envelopes' worth
    for tag in tags:
        response = registry.put_manifest("team/app", tag, image.manifest, OCI_MANIFEST)
        assert response.status_code == 201
    deliverer = notify.Deliverer(reg)
    for _ in range(3):
        deliverer.deliver_once()
    pushed_tags = [e["target"].get("tag") for e in receiver.events("/up")]
    assert pushed_tags[3:] == tags  # in order, all of them, while "flaky" fails
    figures = notify.counts(reg)
    assert figures["up"]["pending"] == 0
    assert figures["flaky"]["pending"] == 3 + len(tags)
    assert figures["flaky"]["failed"] > 0
    assert receiver.delivered("/flaky") == []
    flaky = next(entry for entry in notify.status(reg) if entry["name"] == "flaky")
    assert flaky["last_error"] == "HTTP 503" and flaky["consecutive_failures"] >= 2

    receiver.status_by_path["/flaky"] = 200
    _drain(reg)
    flaky_events = receiver.events("/flaky")
    assert [e["id"] for e in flaky_events] == [e["id"] for e in receiver.events("/up")]
    assert notify.counts(reg)["flaky"]["pending"] == 0


def test_a_3xx_answer_counts_as_delivered(make_registry: MakeRegistry, receiver: Receiver) -> None:
    reg, registry = make_registry([{"name": "moved", "url": receiver.url()}])
    receiver.status = 302
    registry.push_image("team/app", "v1", layers=1)
    notify.Deliverer(reg).deliver_once()
    assert len(receiver.received) == 1  # one envelope, not followed, not retried
    assert notify.counts(reg)["moved"] == {"pending": 0, "sent": 3, "failed": 0}


def test_the_event_shares_the_transaction_of_its_change(
    make_registry: MakeRegistry, receiver: Receiver, database_url: str
) -> None:
    """If the outbox cannot be written, the change does not happen either."""
    reg, registry = make_registry([{"name": "all", "url": receiver.url()}])
    image = registry.push_image("team/app", layers=1)
    postgres = reg.db.dialect == "postgresql"
    breaker = (
        [
            "CREATE FUNCTION outbox_down() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'outbox down'; END $$",
            "CREATE TRIGGER outbox_down BEFORE INSERT ON notification_event"
            " FOR EACH ROW EXECUTE FUNCTION outbox_down()",
        ]
        if postgres
        else [
            "CREATE TRIGGER outbox_down BEFORE INSERT ON notification_event"
            " BEGIN SELECT RAISE(ABORT, 'outbox down'); END"
        ]
    )
    with reg.db.engine.begin() as conn:
        for statement in breaker:
            conn.execute(text(statement))
    registry.http.application.testing = False  # a 500 response, as a client would see it
    try:
        response = registry.put_manifest("team/app", "v1", image.manifest, OCI_MANIFEST)
        assert response.status_code == 500
        assert registry.http.get("/v2/team/app/manifests/v1").status_code == 404
    finally:
        with reg.db.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER outbox_down" + (" ON notification_event" * postgres)))
            if postgres:
                conn.execute(text("DROP FUNCTION outbox_down()"))
    with reg.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Manifest)) == 1  # by digest
    _drain(reg)
    pushed = [(e["target"]["mediaType"], e["target"].get("tag")) for e in receiver.events()]
    assert pushed == [(BLOB_MEDIA_TYPE, None)] * 2 + [(OCI_MANIFEST, None)]


def test_failed_manifest_put_records_nothing(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    reg, registry = make_registry([{"name": "all", "url": receiver.url()}])
    missing = {"mediaType": "x/y", "digest": sha256(b"absent"), "size": 6}
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": missing, "layers": []}
    ).encode()
    assert registry.put_manifest("team/app", "v1", body, DOCKER_MANIFEST).status_code == 400
    assert notify.counts(reg)["all"] == {"pending": 0, "sent": 0, "failed": 0}


def test_status_command(
    make_registry: MakeRegistry, receiver: Receiver, database_url: str, monkeypatch
) -> None:
    endpoints = [
        {"name": "hook", "url": receiver.url(), "threshold": 1, "backoff": "1h"},
        {"name": "off", "url": receiver.url(), "disabled": True},
    ]
    reg, registry = make_registry(endpoints)
    receiver.status = 500
    registry.push_image("team/app", "v1", layers=1)
    notify.Deliverer(reg).deliver_once()
    from app.cli import main

    monkeypatch.setenv("BERTH_DATABASE_URL", database_url)
    monkeypatch.setenv("BERTH_NOTIFICATIONS", json.dumps(endpoints))
    monkeypatch.setenv("BERTH_STORAGE_DRIVER", "inmemory")
    monkeypatch.delenv("BERTH_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["notify", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ENDPOINT", "STATE", "PENDING", "SENT", "FAILED", "FAILING"]
    assert lines[1].split() == ["hook", "enabled", "3", "0", "3", "1"]
    assert lines[2].split() == ["off", "disabled", "0", "0", "0", "0"]
    assert "hook: last error: HTTP 500" in result.output
    result = CliRunner().invoke(main, ["notify", "status", "--json"])
    report = {entry["name"]: entry for entry in json.loads(result.output)}
    assert report["hook"]["pending"] == 3 and report["hook"]["next_attempt"]


@pytest.mark.parametrize("retention", [0.0])
def test_purge_forgets_delivered_events_only(
    make_registry: MakeRegistry, receiver: Receiver, retention: float
) -> None:
    reg, registry = make_registry(
        [
            {"name": "up", "url": receiver.url("/up")},
            {"name": "down", "url": receiver.url("/down"), "threshold": 1, "backoff": "1h"},
        ]
    )
    receiver.status_by_path["/down"] = 500
    registry.push_image("team/app", "v1", layers=1)
    notify.Deliverer(reg).deliver_once()
    time.sleep(0.01)
    assert notify.purge(reg, retention) == 3
    figures = notify.counts(reg)
    assert figures["up"] == {"pending": 0, "sent": 0, "failed": 0}
    assert figures["down"]["pending"] == 3  # still owed to "down": kept
    with reg.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(NotificationEvent)) == 3


def test_repository_delete_sends_one_event(make_registry: MakeRegistry, receiver: Receiver) -> None:
    reg, registry = make_registry([{"name": "all", "url": receiver.url()}])
    registry.push_image("team/app", "v1", layers=1)
    assert registry.http.delete("/api/v1/repositories/team/app").status_code == 202
    _drain(reg)
    last = receiver.events()[-1]
    assert (last["action"], last["target"]) == ("delete", {"repository": "team/app"})
    assert last["request"]["method"] == "DELETE" and last["actor"] == {"name": "alice"}
    for request in receiver.delivered():
        assert check_envelope(request.headers, request.json()) == []


def test_metrics_show_the_outbox_per_endpoint(make_registry: MakeRegistry) -> None:
    # Nothing listens on port 9 (discard): events stay pending, as in a receiver outage.
    _, registry = make_registry([{"name": "down", "url": "http://127.0.0.1:9/events"}])
    registry.push_image("team/app", "v1", layers=1)
    body = registry.http.get("/metrics").get_data(as_text=True)
    pending = [
        line
        for line in body.splitlines()
        if line.startswith('berth_notification_events{endpoint="down",state="pending"}')
    ]
    assert len(pending) == 1
    # config push, layer push, manifest push
    assert float(pending[0].rsplit(" ", 1)[1]) == 3.0
    assert 'berth_notification_events{endpoint="down",state="sent"} 0.0' in body

"""The event log as operators use it: every finished event's row and body, `hookline events
list / show / replay`, `hookline db prune`, and migration 0002 upgrading a database in place."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, select, text, update

from hookline.cli import main
from shared.config import Settings, load_settings
from shared.db import dead_letters, event_bodies, make_engine, webhook_events
from shared.envelope import REDACTED
from shared.migrate import upgrade
from tests.helpers import SOURCES
from tests.test_worker import deliver, run_worker
from workers import runtime
from workers.handlers import REGISTRY, Event


def write_config(path: Path, redis_url: str, database_url: str, archive: str = "") -> Path:
    path.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[worker]
handlers = ["tests.handlers_for_tests"]
max_attempts = 2
backoff_seconds = [0]

[archive]
{archive}

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}

[sources.flaky]
scheme = "hmac"
secrets = ["f"]
event_id = "json:id"
event_type = "json:type"

[sources.late]
scheme = "hmac"
secrets = ["l"]
event_id = "json:id"
event_type = "json:type"
"""
    )
    return path


@pytest.fixture
def env(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    config = write_config(tmp_path / "hookline.toml", redis_url, database_url)
    settings = runtime.configure(load_settings(config)).settings
    return {"config": str(config), "settings": settings, "state": tmp_path}


@pytest.fixture
def engine(env: dict[str, Any]) -> Iterator[Engine]:
    engine = make_engine(env["settings"].database_url)
    yield engine
    engine.dispose()


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    from shared.migrate import alembic_config

    engine = make_engine(url)
    with engine.begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    engine.dispose()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def events_json(config: str, *args: str) -> dict[str, Any]:
    result = invoke("events", "list", "--config", config, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_every_finished_event_keeps_its_row_body_and_redacted_headers(
    env: dict[str, Any], redis_client: redis.Redis, engine: Engine
) -> None:
    settings: Settings = env["settings"]
    # Given a processed event, an ignored one (no handler for "late") and a dead one
    (env["state"] / "fail_f-dead").write_text("99")
    deliver(redis_client, settings, "moncash", n=1)
    deliver(redis_client, settings, "late", body=body({"id": "l-1", "type": "new.thing"}))
    deliver(redis_client, settings, "flaky", body=body({"id": "f-dead", "type": "x"}))
    run_worker(redis_client, settings)
    # Then the log lists all three, newest first, with their outcome
    listed = events_json(env["config"])["events"]
    assert [(e["source"], e["status"]) for e in listed] == [
        ("flaky", "dead"),
        ("late", "ignored"),
        ("moncash", "processed"),
    ]
    # And the processed one's body and headers are kept, signatures redacted
    shown = invoke("events", "show", "moncash", listed[2]["event_id"], "--config", env["config"])
    assert shown.exit_code == 0, shown.output
    detail = json.loads(
        invoke(
            "events", "show", "moncash", listed[2]["event_id"], "--config", env["config"], "--json"
        ).output
    )
    assert json.loads(detail["body"])["id"] == listed[2]["event_id"]
    headers = dict(detail["headers"])
    assert headers["X-MCC-Signature"] == REDACTED
    assert [s["what"] for s in detail["timeline"]] == ["received", "processed (attempt 1)"]
    # And the dead one's timeline shows each failed attempt, then its death
    dead = json.loads(
        invoke("events", "show", "flaky", "f-dead", "--config", env["config"], "--json").output
    )
    assert [s["what"] for s in dead["timeline"]] == [
        "received",
        "attempt 1 failed",
        "attempt 2 failed",
        f"dead-lettered as dead letter {dead['dead_letter_id']}",
    ]
    assert dead["dead_letter_id"] is not None and dead["replayable"] == "dead"
    with engine.connect() as conn:
        assert conn.execute(select(event_bodies)).all() != []


def test_retention_zero_keeps_rows_but_no_bodies(
    tmp_path: Path, redis_url: str, database_url: str, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path / "hookline.toml", redis_url, database_url, "retention_days = 0")
    settings = runtime.configure(load_settings(config)).settings
    deliver(redis_client, settings, "moncash", n=2)
    run_worker(redis_client, settings)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        assert len(conn.execute(select(webhook_events)).all()) == 1
        assert conn.execute(select(event_bodies)).all() == []
    engine.dispose()
    shown = invoke("events", "list", "--config", str(config))
    assert "processed" in shown.output


def test_filters_pages_and_bad_input(env: dict[str, Any], redis_client: redis.Redis) -> None:
    settings: Settings = env["settings"]
    for n in range(5):
        deliver(redis_client, settings, "moncash", n=n)
    deliver(redis_client, settings, "late", body=body({"id": "l-2", "type": "t"}))
    run_worker(redis_client, settings)
    config = env["config"]
    # filters
    assert [e["event_id"] for e in events_json(config, "--status", "ignored")["events"]] == ["l-2"]
    assert len(events_json(config, "--source", "moncash")["events"]) == 5
    assert len(events_json(config, "--since", "1")["events"]) == 6
    assert events_json(config, "--since", "2000-01-01T00:00:00Z", "--type", "nope")["events"] == []
    # keyset pages: 2 + 2 + 2, each continuing where the last stopped, nothing twice
    seen: list[int] = []
    before: list[str] = []
    while True:
        page = events_json(config, "--limit", "2", *before)
        seen += [e["id"] for e in page["events"]]
        if page["next_before"] is None:
            break
        before = ["--before", str(page["next_before"])]
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 6
    # a filter that cannot be read is a usage error naming it; a missing event is status 3
    bad = invoke("events", "list", "--config", config, "--since", "yesterday")
    assert bad.exit_code == 2 and "since" in bad.output
    missing = invoke("events", "show", "moncash", "nope", "--config", config)
    assert missing.exit_code == 3 and "no event moncash nope" in missing.output


def test_ignored_events_are_replayed_once_when_a_handler_exists(
    env: dict[str, Any], redis_client: redis.Redis, engine: Engine
) -> None:
    settings: Settings = env["settings"]
    # Given two events ignored because "late" had no handler when they arrived
    for i in range(2):
        deliver(redis_client, settings, "late", body=body({"id": f"l-{i}", "type": "t"}))
    run_worker(redis_client, settings)
    applied: list[str] = []

    def late(event: Event, _session: Any) -> None:
        applied.append(event.event_id)

    # When a handler is added and the ignored ones are replayed, twice
    REGISTRY.add("late", "*", late)
    try:
        for _ in range(2):
            result = invoke("events", "replay", "--status", "ignored", "--config", env["config"])
            assert result.exit_code == 0, result.output
            run_worker(redis_client, settings)
    finally:
        REGISTRY.by_source.pop(("late", "*"))
    # Then each was applied once and is now processed
    assert sorted(applied) == ["l-0", "l-1"]
    with engine.connect() as conn:
        statuses = conn.execute(select(webhook_events.c.status)).scalars().all()
    assert statuses == ["processed", "processed"]
    # And replaying one already processed says so and does nothing
    again = invoke("events", "replay", "late", "l-0", "--config", env["config"])
    assert again.exit_code == 0 and "is processed: nothing to do" in again.output
    assert redis_client.llen("rq:queue:hookline") == 0


def test_prune_deletes_old_bodies_in_chunks_and_keeps_the_rows(
    env: dict[str, Any], redis_client: redis.Redis, engine: Engine
) -> None:
    from shared import eventlog

    settings: Settings = env["settings"]
    for n in range(7):
        deliver(redis_client, settings, "moncash", n=n)
    run_worker(redis_client, settings)
    # Given five events received ten days ago and two today
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    with engine.begin() as conn:
        ids = conn.execute(select(webhook_events.c.id).order_by(webhook_events.c.id)).scalars()
        conn.execute(
            update(webhook_events)
            .where(webhook_events.c.id.in_(list(ids)[:5]))
            .values(received_at=old)
        )
    # When pruned with chunks of two
    original = eventlog.PRUNE_CHUNK
    eventlog.PRUNE_CHUNK = 2
    try:
        result = invoke("db", "prune", "--config", env["config"])
    finally:
        eventlog.PRUNE_CHUNK = original
    # Then the five old bodies are gone, the rows all stay
    assert result.exit_code == 0 and "pruned 5" in result.output, result.output
    with engine.connect() as conn:
        assert len(conn.execute(select(event_bodies)).all()) == 2
        assert len(conn.execute(select(webhook_events)).all()) == 7


def test_migration_0002_upgrades_a_database_in_place(database_url: str) -> None:
    url = database_url
    # Given a database at revision 0001 with an event and two dead letters, one purged
    _downgrade(url, "0001")
    engine = make_engine(url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_events (source, event_id, event_type, status, attempts,"
                " received_at, processed_at) VALUES ('s', 'e1', 't', 'processed', 1, :n, :n)"
            ),
            {"n": now},
        )
        for i in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO dead_letters (source, event_id, reason, permanent, attempts,"
                    " errors, headers, body, received_at, failed_at, replays) VALUES"
                    " ('s', :e, 'r', 1, 1, '[]', '[]', :b, :n, :n, 0)"
                ),
                {"e": f"d{i}", "n": now, "b": b"\x00"},
            )
        conn.execute(text("DELETE FROM dead_letters WHERE event_id = 'd2'"))
    # When it is upgraded
    upgrade(url)
    # Then the dead letter's event is marked dead, the old row is intact, and from now on a
    # new dead letter never takes a purged one's id
    with engine.begin() as conn:
        rows = conn.execute(
            select(webhook_events.c.event_id, webhook_events.c.status).order_by(webhook_events.c.id)
        ).all()
        assert [tuple(r) for r in rows] == [("e1", "processed"), ("d1", "dead")]
        ids = []
        for event_id in ("d3", "d4"):
            conn.execute(
                dead_letters.insert().values(
                    source="s",
                    event_id=event_id,
                    reason="r",
                    permanent=1,
                    attempts=1,
                    errors=[],
                    headers=[],
                    body=b"",
                    received_at=now,
                    failed_at=now,
                    replays=0,
                )
            )
            ids.append(
                conn.execute(
                    select(dead_letters.c.id).where(dead_letters.c.event_id == event_id)
                ).scalar_one()
            )
            # purged at once: the next one must not take its id
            conn.execute(dead_letters.delete().where(dead_letters.c.event_id == event_id))
    assert ids[0] > 1 and ids[1] == ids[0] + 1
    engine.dispose()


def test_a_replayed_event_keeps_its_whole_story(
    env: dict[str, Any], redis_client: redis.Redis, engine: Engine
) -> None:
    settings: Settings = env["settings"]
    config = env["config"]
    # Given an event that failed both its attempts and was dead-lettered
    (env["state"] / "fail_f-1").write_text("3")
    deliver(redis_client, settings, "flaky", body=body({"id": "f-1", "type": "x"}))
    run_worker(redis_client, settings)
    [dead] = json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    dl_id = dead["id"]
    # When an operator replays it from the command line, and the replay's first try fails too
    # before the second applies it
    replayed = invoke("events", "replay", "flaky", "f-1", "--config", config)
    assert replayed.exit_code == 0, replayed.output
    run_worker(redis_client, settings)
    # Then its timeline keeps every step, each try numbered among all four, and who asked
    shown = json.loads(
        invoke("events", "show", "flaky", "f-1", "--config", config, "--json").output
    )
    assert [s["what"] for s in shown["timeline"]] == [
        "received",
        "attempt 1 failed",
        "attempt 2 failed",
        f"dead-lettered as dead letter {dl_id}",
        f"replay of the dead letter {dl_id} queued, asked by cli",
        "attempt 3 failed",
        "processed (attempt 4)",
    ]
    assert [s.get("detail") for s in shown["timeline"] if "failed" in s["what"]] == [
        "RuntimeError: transient failure, 2 more to come",
        "RuntimeError: transient failure, 1 more to come",
        "RuntimeError: transient failure, 0 more to come",
    ]
    assert (shown["status"], shown["attempts"], shown["dead_letter_id"]) == ("processed", 4, dl_id)
    assert [e["attempt"] for e in shown["errors"]] == [1, 2, 3]
    # And the text says the same
    text = invoke("events", "show", "flaky", "f-1", "--config", config).output
    assert "attempts: 4" in text
    assert f"dead letter: {dl_id} (applied by a replay: `hookline dlq list --replayed`)" in text
    assert f"replay of the dead letter {dl_id} queued, asked by cli" in text
    # And the dead letter is no longer among those to deal with, but listed with the replayed
    assert json.loads(invoke("dlq", "list", "--config", config, "--json").output) == []
    [kept] = json.loads(invoke("dlq", "list", "--replayed", "--config", config, "--json").output)
    assert kept["id"] == dl_id and kept["applied_at"] is not None
    assert "(applied)" in invoke("dlq", "list", "--replayed", "--config", config).output
    # And once purged with the replayed ones, the event still names it
    purged = invoke("dlq", "purge", "--all", "--replayed", "--config", config)
    assert purged.output == "purged 1 dead letter(s)\n"
    text = invoke("events", "show", "flaky", "f-1", "--config", config).output
    assert f"dead letter: {dl_id} (purged)" in text


def test_a_replay_that_dies_again_adds_its_steps(
    env: dict[str, Any], redis_client: redis.Redis
) -> None:
    settings: Settings = env["settings"]
    config = env["config"]
    # Given a dead event whose replay fails every try again
    (env["state"] / "fail_g-1").write_text("99")
    deliver(redis_client, settings, "flaky", body=body({"id": "g-1", "type": "x"}))
    run_worker(redis_client, settings)
    assert invoke("dlq", "replay", "--all", "--config", config).exit_code == 0
    run_worker(redis_client, settings)
    # Then the timeline shows both deaths, the replay between them, and four tries
    shown = json.loads(
        invoke("events", "show", "flaky", "g-1", "--config", config, "--json").output
    )
    dl_id = shown["dead_letter_id"]
    assert [s["what"] for s in shown["timeline"]] == [
        "received",
        "attempt 1 failed",
        "attempt 2 failed",
        f"dead-lettered as dead letter {dl_id}",
        f"replay of the dead letter {dl_id} queued, asked by cli",
        "attempt 3 failed",
        "attempt 4 failed",
        f"dead-lettered as dead letter {dl_id}",
    ]
    assert (shown["status"], shown["attempts"]) == ("dead", 4)
    [listed] = json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    assert listed["attempts"] == 4 and listed["applied_at"] is None


def test_migration_0003_upgrades_a_database_in_place(env: dict[str, Any], engine: Engine) -> None:
    url = env["settings"].database_url
    # Given a database at revision 0002 with a dead event and its dead letter
    _downgrade(url, "0002")
    now = dt.datetime.now(dt.UTC)
    errors = [{"attempt": 1, "at": now.isoformat(), "error": "E: old", "permanent": True}]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_events (source, event_id, event_type, status, attempts,"
                " received_at, processed_at, errors) VALUES"
                " ('flaky', 'o-1', 't', 'dead', 1, :n, :n, :e)"
            ),
            {"n": now, "e": json.dumps(errors)},
        )
        conn.execute(
            text(
                "INSERT INTO dead_letters (source, event_id, reason, permanent, attempts,"
                " errors, headers, body, received_at, failed_at, replays) VALUES"
                " ('flaky', 'o-1', 'E: old', 1, 1, :e, '[]', :b, :n, :n, 0)"
            ),
            {"n": now, "b": b"{}", "e": json.dumps(errors)},
        )
    # When it is upgraded
    upgrade(url)
    engine.dispose()
    # Then the event's timeline is still read from its row, and its dead letter is still dead
    shown = json.loads(
        invoke("events", "show", "flaky", "o-1", "--config", env["config"], "--json").output
    )
    assert [s["what"] for s in shown["timeline"]] == [
        "received",
        "attempt 1 failed permanently",
        "dead-lettered",
    ]
    [listed] = json.loads(invoke("dlq", "list", "--config", env["config"], "--json").output)
    assert (listed["event_id"], listed["applied_at"]) == ("o-1", None)


PEOPLE_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def _iso_utc(value: str) -> bool:
    return "T" in value and dt.datetime.fromisoformat(value).utcoffset() == dt.timedelta(0)


def test_times_read_the_same_for_people_everywhere_and_iso_8601_in_json(
    env: dict[str, Any], redis_client: redis.Redis
) -> None:
    import re

    settings: Settings = env["settings"]
    config = env["config"]
    # Given a dead event (one attempt failed before it died)
    (env["state"] / "fail_t-1").write_text("99")
    deliver(redis_client, settings, "flaky", body=body({"id": "t-1", "type": "x"}))
    run_worker(redis_client, settings)
    [dead] = json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    # Then the tables, the details and the timelines show one form, UTC with its zone
    for args in (
        ["events", "list"],
        ["events", "show", "flaky", "t-1"],
        ["dlq", "list"],
        ["dlq", "show", str(dead["id"])],
    ):
        shown = invoke(*args, "--config", config).output
        times = re.findall(r"\d{4}-\d\d-\d\d[ T][0-9:.+]+(?: UTC|Z)?", shown)
        assert times and all(re.fullmatch(PEOPLE_TIME, t) for t in times), (args, times)
    # And every --json holds ISO 8601 times with their offset
    listed = events_json(config)["events"][0]
    assert _iso_utc(listed["received_at"]) and _iso_utc(listed["processed_at"])
    detail = json.loads(
        invoke("events", "show", "flaky", "t-1", "--config", config, "--json").output
    )
    assert all(_iso_utc(step["at"]) for step in detail["timeline"])
    assert _iso_utc(dead["failed_at"]) and _iso_utc(dead["received_at"])

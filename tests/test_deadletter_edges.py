"""Dead letters at their edges, through the functions the CLI and the console call: an event
that dies again after a replay, what a dead letter keeps (bounded and cleaned), the filters and
their time bounds, pages, replays (the queued job, the marks) and purges across chunks.

On SQLite (the database side of recording is on both backends in tests/test_worker.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from sqlalchemy import Engine, event, insert, select, update

from shared.db import dead_letters, make_engine, utcnow, webhook_events
from shared.enqueue import JobSpec
from shared.envelope import Envelope
from shared.eventlog import Filter
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings
from workers import deadletters
from workers.deadletters import PURGE_CHUNK, AttemptError

AT = 1_700_000_000.0


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    eng = make_engine(sqlite_url)
    yield eng
    eng.dispose()


def envelope(event_id: str, source: str = "moncash", **kw: Any) -> Envelope:
    fields: dict[str, Any] = {"received_at": AT, "headers": (), "body": b"{}", **kw}
    return Envelope(source=source, event_id=event_id, **fields)


def error(attempt: int, text: str, permanent: bool = False) -> AttemptError:
    return AttemptError(attempt, AT + attempt, text, permanent)


def die(engine: Engine, env: Envelope, *errors: AttemptError, event_type: str = "t") -> bool:
    return deadletters.record(
        engine, env, event_type=event_type, errors=list(errors), permanent=errors[-1].permanent
    )


def letter(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(dead_letters).where(dead_letters.c.event_id == event_id)).one()
    return dict(row._mapping)


def event_row(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        query = select(webhook_events).where(webhook_events.c.event_id == event_id)
        return dict(conn.execute(query).one()._mapping)


def error_texts(errors: list[dict[str, Any]]) -> list[tuple[int, str, bool]]:
    return [(e["attempt"], e["error"], e["permanent"]) for e in errors]


# -- recording -------------------------------------------------------------------------------


def test_an_event_that_dies_again_after_its_replay_adds_up_attempts_and_errors(
    engine: Engine,
) -> None:
    # Given an event dead after two attempts, and another event's dead letter beside it
    assert die(engine, envelope("other"), error(1, "E: other", True))
    assert die(engine, envelope("evt"), error(1, "E: first"), error(2, "E: second"))
    # When its replay dies too, now with another type and a permanent error
    replayed = envelope("evt", replay="dead")
    assert die(engine, replayed, error(1, "E: third", True), event_type="t2")
    # Then its dead letter and its row hold all three attempts, in order, numbered among every
    # try of the event, and the last reason
    dl = letter(engine, "evt")
    expected = [(1, "E: first", False), (2, "E: second", False), (3, "E: third", True)]
    assert (dl["attempts"], error_texts(dl["errors"])) == (3, expected)
    assert (dl["reason"], dl["permanent"], dl["event_type"]) == ("E: third", 1, "t2")
    row = event_row(engine, "evt")
    assert (row["status"], row["attempts"], row["event_type"]) == ("dead", 3, "t2")
    assert error_texts(row["errors"]) == expected
    # And the other event's dead letter is untouched
    assert letter(engine, "other")["attempts"] == 1


def test_only_a_replay_of_an_ignored_event_may_take_its_row(engine: Engine) -> None:
    # Given an event recorded as ignored (no handler when it arrived)
    with engine.begin() as conn:
        conn.execute(
            insert(webhook_events).values(
                source="moncash",
                event_id="ign",
                status="ignored",
                attempts=1,
                received_at=utcnow(),
                processed_at=utcnow(),
            )
        )
    # When it dies outside a replay, Then nothing is written: it was finished before
    assert not die(engine, envelope("ign"), error(1, "E: x"))
    assert event_row(engine, "ign")["status"] == "ignored"
    # When its replay (of an ignored event) dies, Then its row is dead and it has a dead letter
    assert die(engine, envelope("ign", replay="ignored"), error(1, "E: y"))
    assert event_row(engine, "ign")["status"] == "dead"
    assert letter(engine, "ign")["reason"] == "E: y"
    # When a second replay of the ignored event (queued before the first died) dies too,
    # Then it takes its own dead row: the attempts (the ignored run's too) and errors add up
    assert die(engine, envelope("ign", replay="ignored"), error(1, "E: z"))
    dl = letter(engine, "ign")
    assert (dl["attempts"], dl["reason"]) == (3, "E: z")
    assert error_texts(dl["errors"]) == [(2, "E: y", False), (3, "E: z", False)]
    assert event_row(engine, "ign")["attempts"] == 3


def test_a_dead_letter_keeps_bounded_clean_text(engine: Engine) -> None:
    # Given an event with a long remote address, long and dirty headers, a multi-line error
    env = envelope(
        "dirty",
        remote="r" * 70,
        headers=(("K" * 250, "v" * 5000), ("Nul", "a\x00b"), ("Lone", "a\ud800b")),
    )
    # When it dies with an error of many lines, the first too long for a reason, all too long
    assert die(engine, env, error(1, "x" * 600 + "\nsecond line\x00" + "y" * 2000))
    # Then the reason is the first line, 500 characters; each header is cleaned and bounded
    dl = letter(engine, "dirty")
    assert dl["reason"] == "x" * 500
    assert dl["headers"] == [["K" * 200, "v" * 4000], ["Nul", "a\\x00b"], ["Lone", "a\\ud800b"]]
    # And the error keeps its first 2000 characters, its NUL spelt out
    assert dl["errors"][0]["error"] == "x" * 600 + "\nsecond line\\x00" + "y" * 1384
    assert dl["errors"][0]["permanent"] is False
    # And the dead letter keeps the whole remote address, the event's row its first 64 chars
    assert dl["remote"] == "r" * 70
    assert event_row(engine, "dirty")["remote"] == "r" * 64


def test_an_event_without_a_remote_address_keeps_none(engine: Engine) -> None:
    assert die(engine, envelope("anon"), error(1, "E"))
    assert die(engine, envelope("blank", remote=""), error(1, "E"))
    assert (letter(engine, "anon")["remote"], event_row(engine, "anon")["remote"]) == (None, None)
    assert event_row(engine, "blank")["remote"] is None


def test_the_same_event_id_from_two_sources_makes_two_dead_letters(engine: Engine) -> None:
    # Given an event dead after two attempts
    assert die(engine, envelope("same"), error(1, "E: a"), error(2, "E: b"))
    # When another source's event of the same id dies
    assert die(engine, envelope("same", source="github"), error(1, "E: gh"))
    # Then its dead letter and row hold its own attempt only
    with engine.connect() as conn:
        query = select(dead_letters).where(dead_letters.c.source == "github")
        dl = conn.execute(query).one()
        row = conn.execute(select(webhook_events).where(webhook_events.c.source == "github")).one()
    assert (dl.attempts, error_texts(dl.errors)) == (1, [(1, "E: gh", False)])
    assert (row.attempts, error_texts(row.errors)) == (1, [(1, "E: gh", False)])


def test_an_error_without_text_is_a_failure_all_the_same(engine: Engine) -> None:
    assert die(engine, envelope("mute"), error(1, ""))
    assert letter(engine, "mute")["reason"] == "failed"


# -- filters and pages -----------------------------------------------------------------------


def dead_at(engine: Engine, event_id: str, when: dt.datetime, **kw: Any) -> int:
    assert die(engine, envelope(event_id, kw.pop("source", "moncash")), error(1, "E"), **kw)
    with engine.begin() as conn:
        conn.execute(
            update(dead_letters).where(dead_letters.c.event_id == event_id).values(failed_at=when)
        )
    return int(letter(engine, event_id)["id"])


def test_filters_pick_by_source_type_event_and_time_bounds(engine: Engine) -> None:
    # Given dead letters of two sources and types, dead at three times
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    a = dead_at(engine, "a", t0, event_type="paid")
    b = dead_at(engine, "b", t0 + dt.timedelta(days=1), event_type="refund")
    c = dead_at(engine, "c", t0 + dt.timedelta(days=2), source="github", event_type="paid")

    def ids(flt: Filter) -> list[int]:
        listed = [r["id"] for r in deadletters.list_page(engine, flt).rows]
        assert sorted(listed) == deadletters.matching_ids(engine, flt)
        assert deadletters.count(engine, flt) == len(listed)
        return sorted(listed)

    # Then each filter keeps exactly its dead letters; since is inclusive, until exclusive
    assert ids(Filter()) == [a, b, c]
    assert ids(Filter(source="github")) == [c]
    assert ids(Filter(type="paid")) == [a, c]
    assert ids(Filter(event_id="b")) == [b]
    assert ids(Filter(since=t0 + dt.timedelta(days=1))) == [b, c]
    assert ids(Filter(until=t0 + dt.timedelta(days=1))) == [a]
    assert ids(Filter(source="moncash", type="refund")) == [b]


def test_pages_go_newest_first_and_end(engine: Engine) -> None:
    # Given five dead letters
    ids = [dead_at(engine, f"p{i}", utcnow()) for i in range(5)]
    # When they are listed two at a time, Then each page goes on where the last one stopped
    first = deadletters.list_page(engine, limit=2)
    assert ([r["id"] for r in first.rows], first.next_before) == (ids[:2:-1], ids[3])
    second = deadletters.list_page(engine, limit=2, before=first.next_before)
    assert ([r["id"] for r in second.rows], second.next_before) == ([ids[2], ids[1]], ids[1])
    last = deadletters.list_page(engine, limit=2, before=second.next_before)
    assert ([r["id"] for r in last.rows], last.next_before) == ([ids[0]], None)
    # And a page of one holds one
    assert [r["id"] for r in deadletters.list_page(engine, limit=1).rows] == [ids[4]]


def test_a_page_holds_fifty_unless_asked_otherwise(engine: Engine) -> None:
    ids = [dead_at(engine, f"f{i}", utcnow()) for i in range(51)]
    page = deadletters.list_page(engine)
    assert (len(page.rows), page.next_before) == (50, ids[1])


def test_all_but_those_already_replayed_since_they_died(engine: Engine) -> None:
    # Given dead letters never replayed, replayed since they died, and replayed before dying,
    # and one replayed the very instant it died
    now = utcnow()
    never = dead_at(engine, "never", now)
    replayed = dead_at(engine, "replayed", now - dt.timedelta(hours=1))
    again = dead_at(engine, "again", now)
    instant = dead_at(engine, "instant", now)
    with engine.begin() as conn:
        marks = ((replayed, now), (again, now - dt.timedelta(hours=1)), (instant, now))
        for dl_id, when in marks:
            query = update(dead_letters).where(dead_letters.c.id == dl_id)
            conn.execute(query.values(replayed_at=when))
    # Then --all without those waiting for their replay leaves out those replayed since
    everything = deadletters.matching_ids(engine, Filter())
    assert everything == [never, replayed, again, instant]
    waiting = deadletters.matching_ids(engine, Filter(), waiting_replay=False)
    assert waiting == [never, again]


# -- replay and purge ------------------------------------------------------------------------


def test_a_replay_queues_the_event_as_it_arrived_and_counts_each_replay(
    engine: Engine, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a dead letter with its headers and remote address
    env = envelope("rep", remote="203.0.113.7", headers=(("X-Kind", "test"),))
    assert die(engine, env, error(1, "E: x"))
    dl_id = int(letter(engine, "rep")["id"])
    spec = JobSpec.from_settings(make_settings(redis_url))
    seen: list[tuple[int, str]] = []
    # When it is replayed, with an id that is no dead letter before it
    done = list(
        deadletters.replay(
            engine, redis_client, spec, [999, dl_id], lambda *a: seen.append(a), by="cli"
        )
    )
    # Then only the dead letter is replayed, its job queued carrying the event as it arrived
    assert done == [dl_id]
    queue = Queue(spec.queue, connection=redis_client, serializer=JobSerializer)
    [job_id] = queue.job_ids
    assert seen == [(dl_id, job_id)]
    job = Job.fetch(job_id, connection=redis_client, serializer=JobSerializer)
    queued = Envelope.from_dict(job.args[0])
    assert (queued.headers, queued.remote, queued.replay) == (env.headers, env.remote, "dead")
    # And each replay is counted and dated
    list(deadletters.replay(engine, redis_client, spec, [dl_id], by="cli"))
    dl = letter(engine, "rep")
    assert dl["replays"] == 2
    assert dl["replayed_at"] is not None


def test_a_purge_deletes_across_chunks_and_counts_them_all(engine: Engine) -> None:
    # Given two dead letters, named among ids that are none, one of them past the second chunk
    first = dead_at(engine, "first", utcnow())
    last = dead_at(engine, "last", utcnow())
    missing = list(range(10_000, 10_000 + 2 * PURGE_CHUNK))
    commits: list[None] = []
    event.listen(engine, "commit", lambda conn: commits.append(None))
    # When they are purged
    purged = deadletters.purge(engine, [first, *missing, last])
    # Then both are gone and both are counted, in a transaction per chunk
    assert purged == 2
    assert deadletters.count(engine) == 0
    assert len(commits) == 3

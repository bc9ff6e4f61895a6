"""What the chaos run concludes from the tables and its own records: the checks, the
measurements, the PASS/MISS targets and the printed summary.

Percentiles are :func:`tests.processes.percentile` (nearest rank), the benchmark's too."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from chaos.sender import Attempt, Key
from tests.processes import percentile

if TYPE_CHECKING:
    from chaos.harness import Abandoned, Harness

#: targets, as stated in the brief
MAX_INGRESS_SECONDS = 3.0
MAX_503_SECONDS = 1.0
#: a job whose worker was killed (or SIGSTOPped) is retried or dead-lettered within this many
#: seconds: its registry entry lives 15 s without a heartbeat and a janitor sweeps every 5 s
#: (workers.worker), so ~20 s; 30 s leaves room for a sweep that is slow or skipped once
MAX_DECISION_SECONDS = 30.0
#: then a retried job is applied after its backoff (the run's backoff plus RQ's +-20 % jitter)
#: and at most this long besides: RQ's scheduler moves due retries every second, the janitor
#: after 2 s, and a worker may be finishing a batch that holds a slow (1 s) event
APPLY_SLACK_SECONDS = 10.0

#: event kinds whose processing is delayed on purpose (retries, dead letters, sleeps)
DELAYED_KINDS = ("flaky", "poison", "slow")
#: an ordinary event applied later than this after its acknowledgement is listed as late
LATE_SECONDS = 10.0


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """How many, min, median and max (None when there are none)."""
    return {
        "n": len(values),
        "min": rnd(min(values), digits) if values else None,
        "median": rnd(statistics.median(values), digits) if values else None,
        "max": rnd(max(values), digits) if values else None,
    }


def show(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "none"
    return f"{s['min']} / {s['median']} / {s['max']} s (min / median / max of {s['n']})"


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def ts(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def answer(a: Attempt) -> str:
    """A request's answer: its status, or the error it met (``timeout``...)."""
    return str(a.status) if a.status is not None else str(a.error)


def applied_at(key: Key, events: dict[Key, Any], dead: dict[Key, Any]) -> float | None:
    """When the event reached a table: processed_at, else the dead letter's failed_at."""
    row = events.get(key)
    if row is not None:
        return ts(row.processed_at)
    dl = dead.get(key)
    return ts(dl.failed_at) if dl is not None else None


def checks(h: Harness, tables: dict[str, Any], drain: dict[str, Any]) -> dict[str, Any]:
    """The guarantees, on what the tables hold once the queues drained."""
    assert h.sender is not None
    r = h.sender.result
    events, dead, effects, pays = (
        tables["events"],
        tables["dead"],
        tables["effects"],
        tables["payments"],
    )
    sent = r.events
    acked = set(r.acked)
    # every event a worker finished has a webhook_events row: processed, ignored or dead (a
    # dead-lettered event has its dead_letters row too)
    applied = set(events) | set(dead)
    processed = {k for k, e in events.items() if e.status == "processed"}
    dead_rows = {k for k, e in events.items() if e.status == "dead"}
    poison = {k for k, s in sent.items() if s.kind == "poison"}
    poison_acked = poison & acked
    # payments: statuses of one reference arriving out of order must end "completed"
    pair_refs: dict[str, list[Key]] = {}
    for k, s in sent.items():
        if s.kind.startswith("pair_") and s.reference:
            pair_refs.setdefault(s.reference, []).append(k)
    pair_bad = []
    for ref, keys in sorted(pair_refs.items()):
        completed = [k for k in keys if k in processed and sent[k].kind == "pair_completed"]
        if completed and (ref not in pays or pays[ref].status != "completed"):
            pair_bad.append({"reference": ref, "status": pays[ref].status if ref in pays else None})
    single_bad = [
        list(k)
        for k, s in sent.items()
        if s.kind in ("moncash", "slow", "twin")
        and k in processed
        and (s.reference not in pays or pays[s.reference].status != "completed")
    ]
    unexpected = sorted(set(dead) - poison)
    return {
        "acknowledged": len(acked),
        "lost": [list(k) for k in sorted(acked - applied)],
        "duplicated_effects": [
            {
                "event": list(k),
                "rows": e.n,
                "pids": list(e.pids),
                "attempts": list(e.attempts),
            }
            for k, e in sorted(effects.items())
            if e.n > 1
        ],
        "processed_without_effect": [
            list(k)
            for k, e in sorted(events.items())
            if e.status == "processed" and k not in effects
        ],
        # an effect is committed with its event's row 'processed', never with a 'dead' one
        "effect_without_processed_row": [list(k) for k in sorted(set(effects) - processed)],
        "poison_acknowledged": len(poison_acked),
        "dead_letters": len(dead),
        "unexpected_dead_letters": [
            {"event": list(k), "reason": dead[k].reason, "attempts": dead[k].attempts}
            for k in unexpected
        ],
        "poison_not_dead_lettered": [list(k) for k in sorted(poison_acked - set(dead))],
        "dead_letter_reason_wrong": [
            list(k)
            for k in sorted(set(dead) & poison)
            if "poison" not in (dead[k].reason or "") or not dead[k].permanent
        ],
        # an event is never both applied and dead: each dead letter has a row 'dead', and no
        # row 'dead' is without its dead letter
        "applied_and_dead": [list(k) for k in sorted(set(dead) & (set(events) - dead_rows))],
        "dead_letter_without_dead_row": [list(k) for k in sorted(set(dead) - dead_rows)],
        "dead_row_without_dead_letter": [list(k) for k in sorted(dead_rows - set(dead))],
        "rows_for_unknown_events": [list(k) for k in sorted(applied - set(sent))],
        "not_acknowledged": [
            {"event": list(k), "applied_anyway": k in applied} for k in sorted(set(sent) - acked)
        ],
        "out_of_order_pairs": len(pair_refs),
        "out_of_order_pairs_wrong_status": pair_bad,
        "payments_wrong_status": single_bad,
        "drain_after_sender": drain,
    }


def table_counts(tables: dict[str, Any]) -> dict[str, Any]:
    events, dead, effects = tables["events"], tables["dead"], tables["effects"]
    return {
        "webhook_events": len(events),
        "webhook_events_by_status": count(e.status for e in events.values()),
        "dead_letters": len(dead),
        "chaos_effect_rows": sum(e.n for e in effects.values()),
        "payments_moncash": len(tables["payments"]),
        "events_needing_more_than_one_attempt": sum(1 for e in events.values() if e.attempts > 1),
        "max_attempts_seen": max((e.attempts for e in events.values()), default=0),
    }


def _redis_window(h: Harness, a: Attempt) -> dict[str, Any] | None:
    """The Redis outage a request fell into (from half a second before the kill until half a
    second after Redis answered again)."""
    for w in h.redis_windows:
        end = w.get("ready_at", w["killed_at"] + 60)
        if w["killed_at"] - 0.5 <= a.t <= end + 0.5:
            return w
    return None


def ingress(h: Harness) -> dict[str, Any]:
    assert h.sender is not None
    r = h.sender.result
    attempts = r.attempts
    answered = [a for a in attempts if a.status is not None]
    lat = [a.latency for a in answered]
    errors = [a for a in attempts if a.status is None]
    s5xx = [a for a in answered if a.status is not None and a.status >= 500]
    inside = [a for a in s5xx if _redis_window(h, a) is not None]
    outside = [a for a in s5xx if _redis_window(h, a) is None]
    slowest = sorted(answered, key=lambda a: -a.latency)[:10]
    return {
        "requests": len(attempts),
        "answered": len(answered),
        "by_status": count(answer(a) for a in attempts),
        "p50_s": rnd(percentile(lat, 50), 4),
        "p99_s": rnd(percentile(lat, 99), 4),
        "max_s": rnd(max(lat, default=0.0), 4),
        "p99_outside_redis_outages_s": rnd(
            percentile([a.latency for a in answered if _redis_window(h, a) is None], 99), 4
        ),
        "client_timeouts_3s": sum(1 for a in errors if a.error == "timeout"),
        "connection_errors": sum(1 for a in errors if a.error != "timeout"),
        "slowest": [
            {
                "t": round(a.t - h.t0, 2),
                "latency_s": round(a.latency, 3),
                "status": a.status,
                "delivery": a.delivery,
                "try": a.try_no,
            }
            for a in slowest
        ],
        "answers_5xx_during_redis_outage": len(inside),
        "answers_5xx_during_redis_outage_max_s": rnd(
            max((a.latency for a in inside), default=0.0), 4
        ),
        "answers_5xx_during_redis_outage_p50_s": rnd(
            percentile([a.latency for a in inside], 50), 4
        ),
        "answers_5xx_outside_redis_outage": [
            {"t": round(a.t - h.t0, 2), "status": a.status, "latency_s": round(a.latency, 3)}
            for a in outside
        ],
        "errors_outside_redis_outage": [
            {"t": round(a.t - h.t0, 2), "error": a.error, "latency_s": round(a.latency, 3)}
            for a in errors
            if _redis_window(h, a) is None
        ],
        "rejected_4xx": [asdict(a) for a in r.rejected[:20]],
        "deliveries_given_up": len(r.gave_up),
    }


def deliveries(h: Harness) -> dict[str, Any]:
    assert h.sender is not None
    r = h.sender.result
    first_try = [a for a in r.attempts if a.try_no == 1]
    redeliv = [a for a in first_try if a.delivery == "redelivery"]
    twins: dict[Key, list[int | None]] = {}
    for a in first_try:
        if r.events[(a.source, a.event_id)].kind == "twin":
            twins.setdefault((a.source, a.event_id), []).append(a.status)
    # a redelivery answered 202 is expected when the event had not been acknowledged yet (its
    # first delivery was refused while Redis was down); after an acknowledgement it would mean
    # the dedup claim was lost
    accepted_again = [
        {
            "event": [a.source, a.event_id],
            "t": round(a.t - h.t0, 2),
            "first_acknowledged_t": round(r.acked[(a.source, a.event_id)][0] - h.t0, 2),
        }
        for a in redeliv
        if a.status == 202 and r.acked[(a.source, a.event_id)][0] < a.t
    ]
    return {
        "redeliveries_accepted_again_after_acknowledgement": accepted_again,
        "events_sent": len(r.events),
        "by_kind": count(s.kind for s in r.events.values()),
        "send_rate_per_s": round(r.ticks / max(1e-9, r.stopped_sending_at - r.started_at), 2),
        "redeliveries": len(redeliv),
        "redeliveries_answered": count(str(a.status or a.error) for a in redeliv),
        "twins": len(twins),
        "twins_answers": count(",".join(sorted(str(s) for s in v)) for v in twins.values()),
    }


def _when(value: Any) -> float | None:
    """An attempt error's time: a timestamp in the job's meta, ISO 8601 in the tables."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    return None


def abandonment_decisions(errors: Iterable[Any]) -> list[tuple[float, int | None]]:
    """When a janitor decided that an attempt was abandoned (its worker died or froze, or died
    between taking the job and starting it), and that attempt's number, oldest first: the time
    ``workers.retries.attempt_failed`` stamped on the attempt's error when it decided to retry
    or dead-letter the event."""
    from workers.retries import ABANDONED, STUCK

    texts = {ABANDONED.error, STUCK.error}
    found: set[tuple[float, int | None]] = set()
    for e in errors:
        if not isinstance(e, dict) or e.get("error") not in texts:
            continue
        at = _when(e.get("at"))
        attempt = e.get("attempt")
        if at is not None:
            found.add((round(at, 3), attempt if isinstance(attempt, int) else None))
    return sorted(found)


def values(rows: Iterable[dict[str, Any]], field: str) -> list[float]:
    return [float(x[field]) for x in rows if x[field] is not None]


def max_backoff_seconds(h: Harness) -> float:
    """The longest wait before a retry the run's configuration allows (+20 % jitter)."""
    w = h.settings.worker
    return float(round(max(w.backoff_seconds[: max(1, w.max_attempts - 1)]) * 1.2))


def recovery(h: Harness, tables: dict[str, Any]) -> dict[str, Any]:
    """How the work a fault left in the middle came back, per abandoned job:

    - the retry decision: when a janitor retried or dead-lettered the job, from the time
      ``workers.retries`` stamped on the abandoned attempt's error (kept in the job's meta in
      Redis and, once the event ends, in its webhook_events/dead_letters row);
    - applied: a killed worker's job, the event's processed_at (or the dead letter's time);
      a stopped worker's job, when its row became visible (the zombie's own row carries the
      time of its insert, before the stop), which waits for the SIGCONT when the zombie holds
      the row's lock.

    A job abandoned again by a later fault was taken up again before that fault: its
    measures for the first abandonment stop there, and the next one starts."""
    assert h.sender is not None
    r = h.sender.result
    events, dead, effects = tables["events"], tables["dead"], tables["effects"]
    later: dict[Key, list[float]] = {}
    for ab in h.abandoned:
        if not ab.visible_at_fault:
            later.setdefault((ab.source, ab.event_id), []).append(ab.fault_at)
    meta = h.job_errors(ab.job_id for ab in h.abandoned if ab.job_id)
    max_backoff = max_backoff_seconds(h)
    rows: list[dict[str, Any]] = []
    for ab in h.abandoned:
        rows.append(_recovery_row(h, ab, events, dead, effects, later, meta, max_backoff))
    counted = [x for x in rows if x["counted"]]
    decided = values(counted, "retry_decided_after_s")
    kills = [x for x in counted if x["fault"] == "kill"]
    stops = [x for x in counted if x["fault"] == "stop"]

    bound = MAX_DECISION_SECONDS + max_backoff + APPLY_SLACK_SECONDS
    delays = []
    for key, (ack_at, _status) in r.acked.items():
        at = applied_at(key, events, dead)
        if at is not None:
            delays.append((max(0.0, at - ack_at), key))
    delays.sort(reverse=True)
    late = [
        {
            "event": list(k),
            "kind": r.events[k].kind,
            "ack_to_applied_s": round(d, 2),
            "acknowledged_t": round(r.acked[k][0] - h.t0, 2),
            "attempts": events[k].attempts if k in events else None,
        }
        for d, k in delays
        if d > LATE_SECONDS and r.events[k].kind not in DELAYED_KINDS
    ]
    # events no fault abandoned that took longer than an abandoned one may: held up behind a
    # SIGSTOPped worker's locks, an outage's backlog... or abandoned without the run noticing
    slow = [
        {"event": list(k), "kind": r.events[k].kind, "seconds": round(d, 2)}
        for d, k in delays
        if d > bound and k not in later
    ]
    return {
        "max_decision_s": MAX_DECISION_SECONDS,
        "max_backoff_s": max_backoff,
        "apply_slack_s": APPLY_SLACK_SECONDS,
        "retry_decided_after_s": summary(decided),
        "kill_applied_after_s": summary(values(kills, "applied_after_s")),
        "kill_decision_to_applied_s": summary(values(kills, "applied_after_decision_s")),
        "stop_applied_after_s": summary(values(stops, "applied_after_s")),
        "stop_resumed_after_s": summary(values(stops, "resumed_after_s")),
        "decision_later_than_target": [x for x in counted if x["decision_late"]],
        "decision_not_seen": [x for x in counted if x["decision_missing"]],
        "applied_later_than_backoff": [x for x in counted if x["applied_late"]],
        "abandoned_more_than_once": sum(1 for v in later.values() if len(v) > 1),
        "slower_than_recovery_bound_not_abandoned_count": len(slow),
        "slower_than_recovery_bound_not_abandoned": slow[:30],
        "late_events_count": len(late),
        "late_events": late[:60],
        "abandoned": rows,
        "abandoned_recovered": sum(1 for x in rows if x["verdict"].startswith("recovered")),
        "abandoned_not_recovered": sum(1 for x in rows if x["verdict"] == "NOT recovered"),
        "worst_ack_to_applied_s": [
            {"event": list(k), "kind": r.events[k].kind, "seconds": round(d, 2)}
            for d, k in delays[:8]
        ],
    }


def _recovery_row(
    h: Harness,
    ab: Abandoned,
    events: dict[Key, Any],
    dead: dict[Key, Any],
    effects: dict[Key, Any],
    later: dict[Key, list[float]],
    meta: dict[str, list[dict[str, Any]]],
    max_backoff: float,
) -> dict[str, Any]:
    key = (ab.source, ab.event_id)
    at = applied_at(key, events, dead)
    seen = h.first_visible.get(key)
    eff = effects.get(key)
    row = events.get(key)
    dl = dead.get(key)
    again = min((t for t in later.get(key, []) if t > ab.fault_at), default=None)
    errors = [
        *(row.errors or [] if row is not None else []),
        *(dl.errors or [] if dl is not None else []),
        *meta.get(ab.job_id or "", []),
    ]
    decisions = [
        (t, n)
        for t, n in abandonment_decisions(errors)
        if t >= ab.fault_at and (again is None or t < again)
    ]
    decision_at, decided_attempt = decisions[0] if decisions else (None, None)
    resumed = h.resumed_at.get(ab.pid) if ab.fault == "stop" else None
    # the dead letter's last error is this decision: the abandonment ended the event
    last = list(dl.errors or [])[-1:] if dl is not None else []
    dead_lettered = decision_at is not None and [t for t, _n in abandonment_decisions(last)] == [
        decision_at
    ]
    counted = True
    applied: float | None = None
    if ab.visible_at_fault or (ab.fault == "kill" and at is not None and at < ab.fault_at):
        verdict, counted = "finished before the fault (not abandoned)", False
    elif again is not None:
        verdict = f"recovered, then abandoned again at {again - h.t0:.1f} s"
    elif ab.fault == "kill":
        verdict = "recovered" if at is not None else "NOT recovered"
        applied = None if at is None else at - ab.fault_at
    else:
        verdict = "recovered" if seen is not None else "NOT recovered"
        applied = None if seen is None else seen - ab.fault_at
    decided = None if decision_at is None else decision_at - ab.fault_at
    after_decision = None if applied is None or decided is None else applied - decided
    # no decision is fine only for a SIGSTOPped worker resumed before one was due (it then
    # finished the job itself)
    resumed_early = resumed is not None and resumed - ab.fault_at < MAX_DECISION_SECONDS
    return {
        "fault": ab.fault,
        "t": round(ab.fault_at - h.t0, 2),
        "worker": ab.worker,
        "pid": ab.pid,
        "holding": ab.how_found,
        "event": [ab.source, ab.event_id],
        "job_id": ab.job_id,
        "verdict": verdict,
        "counted": counted,
        "retry_decided_after_s": rnd(decided, 2),
        "decision": None
        if decided is None
        else ("dead-lettered" if dead_lettered else f"retried (attempt {decided_attempt} ended)"),
        "applied_after_s": rnd(applied, 2),
        "applied_after_decision_s": rnd(after_decision, 2),
        "resumed_after_s": rnd(None if resumed is None else resumed - ab.fault_at, 2),
        "decision_late": counted and decided is not None and decided > MAX_DECISION_SECONDS,
        "decision_missing": counted and decided is None and not resumed_early,
        "applied_late": counted
        and ab.fault == "kill"
        and after_decision is not None
        and after_decision > max_backoff + APPLY_SLACK_SECONDS,
        "visible_after_s": rnd(None if seen is None else seen - ab.fault_at, 2),
        "table": "dead_letters" if dl is not None else ("webhook_events" if row else None),
        "status": row.status if row is not None else None,
        "attempts": row.attempts if row is not None else None,
        "effect_rows": eff.n if eff is not None else 0,
        "effect_by_pid": list(eff.pids) if eff is not None else [],
        "applied_by_the_faulted_worker": bool(eff is not None and ab.pid in list(eff.pids)),
    }


def redis_outages(h: Harness, tables: dict[str, Any]) -> list[dict[str, Any]]:
    """Each Redis outage: 503s, and how long the pipeline took to catch up once Redis was back:
    until the queue was first empty again, and until every event acknowledged from 10 s before
    the kill to 10 s after the restart (the providers' 5 s retries included) was applied."""
    assert h.sender is not None
    r = h.sender.result
    events, dead = tables["events"], tables["dead"]
    out = []
    for w in h.redis_windows:
        killed, ready = w["killed_at"], w.get("ready_at")
        attempts = [a for a in r.attempts if _redis_window(h, a) is w]
        s5xx = [a for a in attempts if a.status is not None and a.status >= 500]
        empty_after = None
        if ready is not None:
            for t, n in h.queue_samples:
                if t > ready and n == 0:
                    empty_after = t - ready
                    break
        abandoned = {(a.source, a.event_id) for a in h.abandoned}
        around = [
            k
            for k, (ack_at, _s) in r.acked.items()
            if ready is not None
            and killed - 10 <= ack_at <= ready + 10
            and r.events[k].kind not in DELAYED_KINDS
            and k not in abandoned  # held by a worker killed meanwhile: timed under recovery
        ]
        applied = [applied_at(k, events, dead) for k in around]
        done = [a for a in applied if a is not None]
        out.append(
            {
                "t": round(killed - h.t0, 2),
                "down_s": rnd(None if ready is None else ready - killed, 2),
                "requests_during": len(attempts),
                "answers_503": len(s5xx),
                "answers_503_max_s": rnd(max((a.latency for a in s5xx), default=0.0), 4),
                "other_answers_during": count(
                    str(a.status or a.error) for a in attempts if a not in s5xx
                ),
                "queue_empty_again_after_s": rnd(empty_after, 2),
                "events_acknowledged_around_it": len(around),
                "all_of_them_applied_after_s": rnd(
                    None if not done or ready is None else max(done) - ready, 2
                ),
            }
        )
    return out


def slow_503s(latencies: Sequence[float], percentiles: Sequence[float] = (50,)) -> dict[str, Any]:
    """How long the answers 503 took (``latencies``): the slowest, the given percentiles,
    and how many took 1 s or more."""
    return {
        "answers_503_max_s": rnd(max(latencies, default=0.0), 4),
        **{f"answers_503_p{p:g}_s": rnd(percentile(latencies, p), 4) for p in percentiles},
        "answers_503_1s_or_more": sum(1 for x in latencies if x >= MAX_503_SECONDS),
    }


def measure_run(h: Harness, tables: dict[str, Any], drain: dict[str, Any]) -> None:
    """What every run measures: the tables' counts, the checks on them, the ingress's answers
    and the deliveries."""
    h.results["tables"] = table_counts(tables)
    h.results["checks"] = checks(h, tables, drain)
    h.results["ingress"] = ingress(h)
    h.results["deliveries"] = deliveries(h)


def supervisor(h: Harness) -> dict[str, Any]:
    """The supervisor's restarts, and the hookline processes that died unexpectedly."""
    return {
        "restarts": len(h.sup.restarts),
        "unexpected_deaths": [
            {"name": x.name, "pid": x.old_pid, "rc": x.returncode, "t": round(x.at - h.t0, 2)}
            for x in h.sup.restarts
            if not x.expected
        ],
    }


Row = Callable[[str, bool | None, str], dict[str, Any]]


def rows(prefix: str = "") -> Row:
    """A maker of target rows named ``prefix`` + name: PASS, MISS or (``ok`` None) n/a."""

    def row(name: str, ok: bool | None, value: str) -> dict[str, Any]:
        result = "n/a" if ok is None else ("PASS" if ok else "MISS")
        return {"target": f"{prefix}{name}", "result": result, "value": value}

    return row


def ingress_row(row: Row, ing: dict[str, Any]) -> dict[str, Any]:
    """A scenario's target on the ingress's slowest answer (never 3 s)."""
    return row(
        "ingress never slower than 3 s",
        ing["max_s"] < MAX_INGRESS_SECONDS and ing["client_timeouts_3s"] == 0,
        f"p99 {ing['p99_s']} s, max {ing['max_s']} s,"
        f" {ing['client_timeouts_3s']} client timeouts,"
        f" {ing['connection_errors']} connection errors",
    )


def deaths_row(row: Row, results: dict[str, Any], more: str = "") -> dict[str, Any]:
    """A scenario's target: no hookline process died (``more`` said after the count)."""
    deaths = results["supervisor"]["unexpected_deaths"]
    return row("no hookline process died", not deaths, f"{len(deaths)} unexpected deaths{more}")


def measure(h: Harness, tables: dict[str, Any], drain: dict[str, Any]) -> None:
    measure_run(h, tables, drain)
    h.results["recovery"] = recovery(h, tables)
    h.results["redis_outages"] = redis_outages(h, tables)
    h.results["postgres_restarts"] = [
        {
            "t": round(x["at"] - h.t0, 2),
            "took_s": rnd(x.get("ready_at", x["at"]) - x["at"], 2),
            "error": x.get("error"),
        }
        for x in h.pg_restarts
    ]
    h.results["supervisor"] = supervisor(h)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    c = results["checks"]
    ing = results["ingress"]
    rec = results["recovery"]
    rep = results.get("replay", {})
    n503 = ing["answers_5xx_during_redis_outage"]
    max503 = ing["answers_5xx_during_redis_outage_max_s"] or 0.0
    decided = rec["retry_decided_after_s"]
    kill_applied = rec["kill_applied_after_s"]
    after_decision = rec["kill_decision_to_applied_s"]
    late = rec["decision_later_than_target"]
    unseen = rec["decision_not_seen"]
    slow_apply = rec["applied_later_than_backoff"]
    apply_bound = rec["max_backoff_s"] + rec["apply_slack_s"]

    row = rows()
    dup = len(c["duplicated_effects"]) + len(rep.get("duplicated_effects_after_replay", []))
    return [
        row(
            "0 acknowledged events lost",
            not c["lost"],
            f"{len(c['lost'])} lost of {c['acknowledged']} acknowledged",
        ),
        row("0 duplicated effects (incl. after replay)", dup == 0, f"{dup} duplicated"),
        row(
            "ingress never slower than 3 s",
            ing["max_s"] < MAX_INGRESS_SECONDS and ing["client_timeouts_3s"] == 0,
            f"p99 {ing['p99_s']} s, max {ing['max_s']} s,"
            f" {ing['client_timeouts_3s']} client timeouts",
        ),
        row(
            "503 within 1 s while Redis is down",
            None if n503 == 0 else max503 < MAX_503_SECONDS,
            f"{n503} answers, max {max503} s,"
            f" median {ing['answers_5xx_during_redis_outage_p50_s']} s",
        ),
        row(
            f"abandoned jobs retried or dead-lettered <= {MAX_DECISION_SECONDS:.0f} s after"
            " kill -9 / SIGSTOP",
            None
            if not decided["n"] and not unseen and not rec["abandoned_not_recovered"]
            else not late and not unseen and rec["abandoned_not_recovered"] == 0,
            f"{decided['n']} decisions after {show(decided)}; {len(late)} later,"
            f" {len(unseen)} not seen, {rec['abandoned_not_recovered']} jobs not recovered"
            f" ({rec['abandoned_more_than_once']} events abandoned more than once)",
        ),
        row(
            f"then applied after their backoff (kill -9: <= decision + {apply_bound:.0f} s)",
            None if not after_decision["n"] else not slow_apply,
            f"kill -> applied {show(kill_applied)}; decision -> applied max"
            f" {after_decision['max']} s; {len(slow_apply)} later",
        ),
        row(
            "SIGSTOPped worker's jobs applied (after SIGCONT if the zombie holds the row)",
            None,
            f"stop -> applied {show(rec['stop_applied_after_s'])};"
            f" SIGCONT {show(rec['stop_resumed_after_s'])} after the stop",
        ),
        row(
            "dead letters = exactly the poison events, with reason",
            not c["unexpected_dead_letters"]
            and not c["poison_not_dead_lettered"]
            and not c["dead_letter_reason_wrong"]
            and not c["applied_and_dead"]
            and not c["dead_letter_without_dead_row"]
            and not c["dead_row_without_dead_letter"]
            and not c["effect_without_processed_row"],
            f"{c['dead_letters']} dead letters, {c['poison_acknowledged']} poison acknowledged,"
            f" {len(c['unexpected_dead_letters'])} unexpected,"
            f" {len(c['applied_and_dead'])} also applied,"
            f" {len(c['dead_letter_without_dead_row']) + len(c['dead_row_without_dead_letter'])}"
            " without their 'dead' row or dead letter",
        ),
        row(
            "replay (2 at once) applies each once",
            bool(rep)
            and rep["applied_once"] == rep["dead_letters_replayed"]
            and rep["dead_letters_left"] == 0,
            f"{rep.get('applied_once')}/{rep.get('dead_letters_replayed')} applied once,"
            f" {rep.get('dead_letters_left')} dead letters left",
        ),
        row(
            "out-of-order statuses end 'completed'",
            not c["out_of_order_pairs_wrong_status"] and not c["payments_wrong_status"],
            f"{c['out_of_order_pairs']} pairs, {len(c['out_of_order_pairs_wrong_status'])} wrong",
        ),
    ]


def print_summary(h: Harness, command: str) -> None:
    res = h.results
    d = res.get("deliveries", {})
    ing = res.get("ingress", {})
    c = res.get("checks", {})
    print()
    print(f"command:  {command}")
    print(f"database: {h.pg_note}")
    print(
        f"sent {d.get('events_sent')} events ({d.get('send_rate_per_s')}/s) in"
        f" {ing.get('requests')} requests; {c.get('acknowledged')} acknowledged;"
        f" {len(c.get('not_acknowledged', []))} never acknowledged"
    )
    print_targets(res["targets"])
    print()
    print(
        f"ingress latency: p50 {ing.get('p50_s')} s, p99 {ing.get('p99_s')} s"
        f" (outside Redis outages {ing.get('p99_outside_redis_outages_s')} s),"
        f" max {ing.get('max_s')} s"
    )
    for o in res.get("redis_outages", []):
        print(
            f"redis kill -9 at {o['t']} s: down {o['down_s']} s, {o['answers_503']} x 503"
            f" (max {o['answers_503_max_s']} s); queue empty again"
            f" {o['queue_empty_again_after_s']} s after restart; the"
            f" {o['events_acknowledged_around_it']} events acknowledged around it all applied"
            f" {o['all_of_them_applied_after_s']} s after restart"
        )
    for p in res.get("postgres_restarts", []):
        print(f"postgres immediate restart at {p['t']} s: took {p['took_s']} s {p['error'] or ''}")
    rec = res.get("recovery", {})
    for x in rec.get("abandoned", []):
        print(
            f"{x['fault']:>4} at {x['t']:>7} s {x['worker']} ({x['holding']}): {x['verdict']};"
            f" {x['decision'] or 'no retry decision'} after {x['retry_decided_after_s']} s,"
            f" applied after {x['applied_after_s']} s, attempts {x['attempts']},"
            f" effect rows {x['effect_rows']} by {x['effect_by_pid']}"
        )
    if rec:
        print(
            f"recovery: retry decided {show(rec['retry_decided_after_s'])};"
            f" kill -> applied {show(rec['kill_applied_after_s'])};"
            f" stop -> applied {show(rec['stop_applied_after_s'])}"
        )
        if rec.get("slower_than_recovery_bound_not_abandoned_count"):
            print(
                f"{rec['slower_than_recovery_bound_not_abandoned_count']} events no fault"
                " abandoned took longer than an abandoned one may (see"
                " recovery.slower_than_recovery_bound_not_abandoned)"
            )
    keys = res.get("redis_keys")
    if keys:
        print(
            f"redis keys: {keys['keys']} under RQ_KEY_PREFIX {keys['rq_key_prefix']!r} and"
            f" {keys['hookline_prefix']!r}; {keys['outside_prefixes_count']} outside"
        )
    sup = res.get("supervisor", {})
    print(
        f"supervisor restarts: {sup.get('restarts')},"
        f" unexpected deaths: {sup.get('unexpected_deaths')}"
    )
    if h.errors:
        print("harness notes:")
        for e in h.errors:
            print(f"  - {e}")
    print(f"results: {h.args.out}")


def print_targets(rows: Sequence[dict[str, Any]]) -> None:
    """The checks of a run as a table: target, PASS or MISS, the measured value."""
    if not rows:
        return
    width = max(len(t["target"]) for t in rows)
    print()
    print(f"{'target'.ljust(width)}  result  value")
    print(f"{'-' * width}  ------  -----")
    for t in rows:
        print(f"{t['target'].ljust(width)}  {t['result']:<6}  {t['value']}")


def print_end(results: dict[str, Any]) -> None:
    """A scenario's summary's end: the targets' table and where the results are."""
    print_targets(results.get("targets", []))
    print(f"results: {results['out']}")

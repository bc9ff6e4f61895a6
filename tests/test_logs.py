"""[logging] format = "json": every line a process writes to stderr is one JSON object, with the
event's fields where known; and what a bad [logging] or [telemetry] setting does."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared import logs
from shared.config import load_settings
from tests.helpers import SOURCES, signed
from tests.processes import (
    ROOT,
    env_for,
    free_port,
    hookline,
    http_ok,
    processes,
    signal_group,
    wait_until,
)
from tests.test_processes import post

JSON_KEYS = {"time", "level", "logger", "message"}


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "hookline.worker", logging.WARNING, __file__, 1, "a %s", ("b",), None
    )
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fields_and_stays_on_one_line() -> None:
    formatter = logs.JsonFormatter()
    # Given a record about an event, with an exception whose traceback spans lines
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        record = _record(source="moncash", event_id="E1", job_id="J1", exc_info=sys.exc_info())
    # When it is formatted
    line = formatter.format(record)
    # Then it is one line of JSON with every field
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "a b" and doc["level"] == "warning"
    assert doc["logger"] == "hookline.worker"
    assert (doc["source"], doc["event_id"], doc["job_id"]) == ("moncash", "E1", "J1")
    assert "ValueError: line one" in doc["exception"]
    assert doc["time"].endswith("Z") and doc["time"][10] == "T"


def test_the_event_being_handled_fills_the_fields_a_line_does_not_give() -> None:
    formatter = logs.JsonFormatter()
    with logs.event_context(source="github", event_id="E2", job_id=None):
        inside = json.loads(formatter.format(_record()))
        own = json.loads(formatter.format(_record(source="stripe")))
    outside = json.loads(formatter.format(_record()))
    assert (inside["source"], inside["event_id"]) == ("github", "E2") and "job_id" not in inside
    assert own["source"] == "stripe"
    assert "source" not in outside


def _config(tmp_path: Path, redis_url: str, extra: str) -> Path:
    config = tmp_path / "hookline.toml"
    config.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "sqlite:///{tmp_path / "h.db"}"
{extra}

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}
"""
    )
    return config


def _json_lines(text: str, what: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"{what}: a stderr line is not JSON: {line[:300]!r}")
        assert isinstance(doc, dict) and doc.keys() >= JSON_KEYS, line
        docs.append(doc)
    return docs


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The spans OpenTelemetry's console exporter printed (JSON objects, among other text)."""
    decoder = json.JSONDecoder()
    spans, at = [], 0
    while (start := text.find("{\n", at)) >= 0:
        doc, at = decoder.raw_decode(text, start)
        if isinstance(doc, dict) and "context" in doc:
            spans.append(doc)
    return spans


@pytest.mark.slow
def test_serve_and_worker_write_only_json_to_stderr_with_the_trace_of_each_event(
    tmp_path: Path, redis_url: str
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is part of .[dev]")
    # Given serve and a worker logging JSON, with traces on, printed by the console exporter
    config = _config(
        tmp_path, redis_url, '[logging]\nformat = "json"\n[telemetry]\ntraces = true\n'
    )
    settings = load_settings(config)
    env = env_for(
        HOOKLINE_CONFIG=str(config), OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="100"
    )
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    body, headers, _ = signed(settings, "moncash", n=1)
    with processes() as procs, out.open("wb") as stdout, err.open("wb") as stderr:
        serve = subprocess.Popen(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        procs.procs.append(serve)
        wait_until(lambda: http_ok(f"{base}/readyz"), 20, "the ingress being ready")
        # When an event is accepted and a forged one refused
        assert post(f"{base}/webhooks/moncash", body, headers)[0] == 202
        forged = {**headers, "X-MCC-Signature": "0" * 64}
        assert post(f"{base}/webhooks/moncash", body + b" ", forged)[0] == 401
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0
    # and a worker applies the event (stopped once it has, and its spans are out)
    wout, werr = tmp_path / "worker.out", tmp_path / "worker.err"
    with processes() as procs, wout.open("wb") as stdout, werr.open("wb") as stderr:
        worker = subprocess.Popen(
            hookline("worker"),
            env=env,
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        procs.procs.append(worker)
        wait_until(
            lambda: (
                "event moncash/" in werr.read_text()
                and '"name": "process hookline"' in wout.read_text()
            ),
            60,
            "the event applied and its span exported",
        )
        signal_group(worker, signal.SIGKILL)
        worker.wait(20)
    # Then every stderr line of both is a JSON object
    ingress_lines = _json_lines(err.read_text(), "serve")
    worker_lines = _json_lines(werr.read_text(), "worker")
    loggers = {d["logger"] for d in ingress_lines + worker_lines}
    assert {"aiohttp.access", "hookline.ingest", "rq.worker", "hookline.worker"} <= loggers
    [rejected] = [d for d in ingress_lines if d["message"].startswith("rejected")]
    assert rejected["source"] == "moncash" and len(rejected["trace_id"]) == 32
    # the applied event's line names it, its job and its trace
    [applied] = [d for d in worker_lines if d["message"].startswith("event moncash/")]
    assert applied["source"] == "moncash" and applied["event_id"] in applied["message"]
    assert applied["job_id"]
    # and that trace is the one the ingress's request span and the worker's span are in
    spans = _console_spans(out.read_text()) + _console_spans(wout.read_text())
    names = {s["name"] for s in spans if s["context"]["trace_id"] == "0x" + applied["trace_id"]}
    assert {"POST /webhooks/{source}", "send hookline", "process hookline", "commit"} <= names
    # and no signature reached a line (the suite-wide check covers the configured secrets)
    everything = err.read_text() + werr.read_text()
    assert headers["X-MCC-Signature"] not in everything and "0" * 64 not in everything


def _refused(argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr.splitlines()


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker", "--burst"]])
def test_an_unknown_log_format_stops_the_command_with_one_line(
    tmp_path: Path, redis_url: str, command: list[str]
) -> None:
    config = _config(tmp_path, redis_url, '[logging]\nformat = "xml"\n')
    status, lines = _refused(hookline(*command), env_for(HOOKLINE_CONFIG=str(config)))
    assert status == 2
    assert lines == [
        'hookline: configuration error: logging.format must be "text" or "json", not \'xml\''
    ]


def test_traces_without_the_otel_packages_stop_the_command_naming_the_extra(
    tmp_path: Path, redis_url: str
) -> None:
    # Given an interpreter where OpenTelemetry cannot be imported (a package that refuses to
    # load stands first on its path)
    blocked = tmp_path / "blocked" / "opentelemetry"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = env_for(PYTHONPATH=f"{blocked.parent}:{ROOT}")
    config = _config(tmp_path, redis_url, "[telemetry]\ntraces = true\n")
    env["HOOKLINE_CONFIG"] = str(config)
    # When serve starts with traces on
    status, lines = _refused(hookline("serve", "--port", "1"), env)
    # Then it stops at once, naming the fix
    assert status == 2
    assert lines == [
        "hookline: configuration error: [telemetry] traces = true needs the OpenTelemetry"
        " packages (opentelemetry.trace is not installed): pip install 'hookline[otel]'"
    ]


@pytest.mark.slow
def test_serve_with_processes_writes_gunicorn_lines_in_json_too(
    tmp_path: Path, redis_url: str
) -> None:
    # Given serve --processes 2 logging JSON
    config = _config(tmp_path, redis_url, '[logging]\nformat = "json"\n')
    settings = load_settings(config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    err = tmp_path / "serve.err"
    body, headers, _ = signed(settings, "moncash", n=2)
    with processes() as procs, err.open("wb") as stderr:
        serve = subprocess.Popen(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port), "--processes", "2"),
            env=env_for(HOOKLINE_CONFIG=str(config)),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        procs.procs.append(serve)
        wait_until(lambda: http_ok(f"{base}/readyz"), 30, "the ingress being ready")
        # When it answers a request and is stopped
        assert post(f"{base}/webhooks/moncash", body, headers)[0] == 202
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    # Then the arbiter's lines, the processes' and the access log are all JSON objects
    lines = _json_lines(err.read_text(), "serve --processes 2")
    loggers = {d["logger"] for d in lines}
    assert {"gunicorn.error", "aiohttp.access"} <= loggers


def test_a_failure_after_logging_started_is_one_json_line(tmp_path: Path, redis_url: str) -> None:
    # Given a port something already listens on, and serve logging JSON
    config = _config(tmp_path, redis_url, '[logging]\nformat = "json"\n')
    with __import__("socket").socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status, lines = _refused(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port)),
            env_for(HOOKLINE_CONFIG=str(config)),
        )
    # Then it stops with exit status 2 and its one line is a JSON object naming the cause
    assert status == 2
    [doc] = _json_lines("\n".join(lines), "serve on a port in use")
    assert doc["level"] == "error" and doc["logger"] == "hookline"
    assert doc["message"].endswith("address already in use: pass another port")


def test_an_exporter_that_is_not_installed_stops_serve_before_it_forks(
    tmp_path: Path, redis_url: str
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is part of .[dev]")
    config = _config(tmp_path, redis_url, "[telemetry]\ntraces = true\n")
    env = env_for(HOOKLINE_CONFIG=str(config), OTEL_TRACES_EXPORTER="zipkin")
    status, lines = _refused(hookline("serve", "--port", "1", "--processes", "2"), env)
    assert status == 2
    assert lines == [
        "hookline: configuration error: OTEL_TRACES_EXPORTER: the 'zipkin' exporter needs a"
        " package providing the 'zipkin' trace exporter"
    ]

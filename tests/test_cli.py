"""The command line as operators use it: exit codes, one-line errors, dead-letter tools."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from rq import Queue
from sqlalchemy import select

from hookline.cli import main
from shared.config import load_settings
from shared.db import dead_letters, make_engine, payments, webhook_events
from tests.helpers import SOURCES
from tests.test_worker import deliver, run_worker
from workers import runtime


def write_config(path: Path, redis_url: str, database_url: str, extra: str = "") -> Path:
    path.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[worker]
handlers = ["tests.handlers_for_tests"]
max_attempts = 2
backoff_seconds = [0]

[sources.poison]
scheme = "hmac"
secrets = ["p"]
event_id = "json:id"
event_type = "json:type"

[sources.moncash]
scheme = "moncash"
secrets = ["{SOURCES["moncash"]["secrets"][0]}"]
{extra}
"""
    )
    return path


@pytest.fixture
def cli_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    database_url = f"sqlite:///{tmp_path / 'cli.db'}"
    config = write_config(tmp_path / "hookline.toml", redis_url, database_url)
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    return {"config": str(config), "database_url": database_url, "state": tmp_path}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_db_upgrade_creates_the_schema_and_is_idempotent(cli_env: dict[str, Any]) -> None:
    for _ in range(2):
        result = invoke("db", "upgrade", "--config", cli_env["config"])
        assert result.exit_code == 0, result.output
    engine = make_engine(cli_env["database_url"])
    with engine.connect() as conn:
        assert conn.execute(select(webhook_events)).all() == []
    engine.dispose()


def test_dead_letter_tools_end_to_end(cli_env: dict[str, Any], redis_client: redis.Redis) -> None:
    config = cli_env["config"]
    assert invoke("db", "upgrade", "--config", config).exit_code == 0
    settings = runtime.configure(load_settings(config)).settings
    # Given two poison events dead-lettered by the worker
    (cli_env["state"] / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=b'{"id": "p-1", "type": "t"}')
    deliver(redis_client, settings, "poison", body=b'{"id": "p-2", "type": "t"}')
    run_worker(redis_client, settings)

    # dlq list --json: newest first
    listed = json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    assert [r["event_id"] for r in listed] == ["p-2", "p-1"]
    assert (
        invoke("dlq", "list", "--config", config, "--source", "moncash", "--json").output.strip()
        == "[]"
    )
    human = invoke("dlq", "list", "--config", config).output
    assert "p-1" in human and "poison" in human

    # dlq show: headers (signature redacted), body, every attempt's error
    dl_id = listed[1]["id"]
    shown = json.loads(invoke("dlq", "show", str(dl_id), "--config", config, "--json").output)
    assert shown["body"] == '{"id": "p-1", "type": "t"}'
    assert shown["errors"][0]["error"].startswith("PayloadError")
    assert ["X-Signature", "[redacted]"] in shown["headers"]
    missing = CliRunner().invoke(main, ["dlq", "show", "999", "--config", config])
    assert missing.exit_code == 3 and missing.output == "hookline: no dead letter 999\n"

    # status
    status = json.loads(invoke("status", "--config", config, "--json").output)
    assert status["dead_letters"] == 2 and status["queued"] == 0

    # replay one after fixing the cause: it is applied once and leaves the dead letters
    (cli_env["state"] / "poison").unlink()
    assert invoke("dlq", "replay", str(dl_id), "--config", config).exit_code == 0
    assert Queue(settings.queue, connection=redis_client).count == 1
    run_worker(redis_client, settings)
    engine = make_engine(cli_env["database_url"])
    with engine.connect() as conn:
        assert conn.execute(select(payments.c.event_id)).scalars().all() == ["p-1"]
        remaining = (
            conn.execute(select(dead_letters.c.event_id).where(dead_letters.c.applied_at.is_(None)))
            .scalars()
            .all()
        )
    assert remaining == ["p-2"]

    # replay --all skips what is already waiting for its replay
    assert invoke("dlq", "replay", "--all", "--config", config).exit_code == 0
    assert invoke("dlq", "replay", "--all", "--config", config).exit_code == 0
    assert Queue(settings.queue, connection=redis_client).count == 1

    # purge
    result = invoke("dlq", "purge", "--all", "--config", config)
    assert result.exit_code == 0 and "purged 1" in result.output
    assert json.loads(invoke("dlq", "list", "--config", config, "--json").output) == []
    engine.dispose()


def test_purge_older_than_keeps_recent(cli_env: dict[str, Any], redis_client: redis.Redis) -> None:
    config = cli_env["config"]
    invoke("db", "upgrade", "--config", config)
    from shared.config import load_settings

    settings = runtime.configure(load_settings(config)).settings
    (cli_env["state"] / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=b'{"id": "p-9", "type": "t"}')
    run_worker(redis_client, settings)
    assert (
        invoke("dlq", "list", "--older-than", "1", "--config", config, "--json").output.strip()
        == "[]"
    )
    assert (
        len(
            json.loads(
                invoke("dlq", "list", "--older-than", "0", "--config", config, "--json").output
            )
        )
        == 1
    )
    assert "purged 0" in invoke("dlq", "purge", "--older-than", "1", "--config", config).output
    assert "purged 1" in invoke("dlq", "purge", "--older-than", "0", "--config", config).output


@pytest.mark.parametrize(
    "extra, cause",
    [
        ("typo_key = 1", "unknown key 'typo_key'"),
        ('[sources.x]\nscheme = "md5sum"\nsecrets = ["s"]', "unknown scheme 'md5sum'"),
        ('[sources.x]\nscheme = "stripe"', "needs a secret"),
        (
            '[sources.x]\nscheme = "stripe"\nsecrets = ["${NOT_SET_ANYWHERE}"]',
            "NOT_SET_ANYWHERE is not set",
        ),
        ('[sources.x]\nscheme = "stripe"\nsecrets = ["s"]\nsecret = "t"', "unknown key 'secret'"),
        ("[ingest]\nmax_body_byte = 5", "unknown key 'max_body_byte'"),
        ('[sources."a/b"]\nscheme = "stripe"\nsecrets = ["s"]', "a source name is"),
        ('[sources.x]\nscheme = "ip-allowlist"', "needs allowed_ips"),
    ],
)
def test_configuration_mistakes_exit_2_with_one_line_naming_them(
    tmp_path: Path, redis_url: str, extra: str, cause: str
) -> None:
    config = write_config(tmp_path / "bad.toml", redis_url, "sqlite://", extra=extra)
    result = CliRunner().invoke(main, ["status", "--config", str(config)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0], result.output


def test_missing_config_and_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "no configuration" in result.output
    result = CliRunner().invoke(main, ["dlq", "replay", "--config", "nope.toml"])
    assert result.exit_code == 2


def test_environment_overrides_and_secret_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.config import load_settings

    path = tmp_path / "hookline.toml"
    path.write_text(
        'redis_url = "redis://file:1/0"\n'
        '[sources.s]\nscheme = "github"\nsecrets = ["${GH_SECRET}"]\n'
    )
    monkeypatch.setenv("GH_SECRET", "from-env")
    monkeypatch.setenv("HOOKLINE_REDIS_URL", "redis://env:2/0")
    monkeypatch.setenv("HOOKLINE_CONFIG", str(path))
    settings = load_settings()
    assert settings.redis_url == "redis://env:2/0"
    assert settings.sources["s"].scheme.config.secrets == ("from-env",)


def test_dead_letters_with_markup_in_them_print_literally(
    cli_env: dict[str, Any], redis_client: redis.Redis
) -> None:
    config = cli_env["config"]
    invoke("db", "upgrade", "--config", config)
    settings = runtime.configure(load_settings(config)).settings
    (cli_env["state"] / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=b'{"id": "p-[/bold]", "type": "[red]"}')
    run_worker(redis_client, settings)
    listed = invoke("dlq", "list", "--config", config)
    assert listed.exit_code == 0 and "[/bold]" in listed.output.replace("\n", "")
    dl_id = json.loads(invoke("dlq", "list", "--config", config, "--json").output)[0]["id"]
    shown = invoke("dlq", "show", str(dl_id), "--config", config)
    assert shown.exit_code == 0 and "p-[/bold]" in shown.output


def _dead_letters(cli_env: dict[str, Any], redis_client: redis.Redis, *event_ids: str) -> list[int]:
    """Poison events dead-lettered by a worker; their dead letter ids, oldest first."""
    config = cli_env["config"]
    assert invoke("db", "upgrade", "--config", config).exit_code == 0
    settings = runtime.configure(load_settings(config)).settings
    (cli_env["state"] / "poison").write_text("")
    for event_id in event_ids:
        deliver(redis_client, settings, "poison", body=json.dumps({"id": event_id}).encode())
    run_worker(redis_client, settings)
    listed = json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    return sorted(r["id"] for r in listed)


def test_missing_dead_letter_ids_are_exit_3_with_one_line_everywhere(
    cli_env: dict[str, Any], redis_client: redis.Redis
) -> None:
    # Given two dead letters, and an id that does not exist
    config = cli_env["config"]
    dl_id, other = _dead_letters(cli_env, redis_client, "p-1", "p-2")
    runner = CliRunner()
    # When an operator shows, replays or purges the missing id
    for command in ("show", "replay", "purge"):
        result = runner.invoke(main, ["dlq", command, "99999", "--config", config])
        # Then each says so in the same line, with exit status 3 ("not found")
        assert result.exit_code == 3, (command, result.output)
        assert result.stderr == "hookline: no dead letter 99999\n", command
    # and nothing was touched
    assert invoke("status", "--config", config, "--json").exit_code == 0
    assert [
        r["id"] for r in json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    ] == [other, dl_id]

    # When one id exists and the other does not, the one that exists is replayed
    result = runner.invoke(main, ["dlq", "replay", str(dl_id), "99999", "--config", config])
    assert result.exit_code == 3
    assert "\nqueued 1 dead letter(s) again: the workers run them now;" in result.stdout
    assert result.stderr == "hookline: no dead letter 99999\n"
    assert Queue("hookline", connection=redis_client).count == 1
    # and purged
    result = runner.invoke(main, ["dlq", "purge", "99999", str(dl_id), "--config", config])
    assert result.exit_code == 3
    assert result.stdout == "purged 1 dead letter(s)\n"
    assert result.stderr == "hookline: no dead letter 99999\n"
    assert [
        r["id"] for r in json.loads(invoke("dlq", "list", "--config", config, "--json").output)
    ] == [other]
    # An id from another source is not found either (nothing outside the filter is touched)
    result = runner.invoke(
        main, ["dlq", "purge", str(other), "--source", "moncash", "--config", config]
    )
    assert result.exit_code == 3 and result.stderr == f"hookline: no dead letter {other}\n"
    assert len(json.loads(invoke("dlq", "list", "--config", config, "--json").output)) == 1
    # while --all finding nothing is not an error
    assert (
        invoke("dlq", "replay", "--all", "--source", "moncash", "--config", config).exit_code == 0
    )


def test_dlq_show_speaks_to_people_and_json_keeps_the_stored_values(
    cli_env: dict[str, Any], redis_client: redis.Redis
) -> None:
    # Given a dead letter that was never replayed
    config = cli_env["config"]
    [dl_id] = _dead_letters(cli_env, redis_client, "p-1")
    # When an operator shows it
    shown = invoke("dlq", "show", str(dl_id), "--config", config)
    # Then the answers are words, not Python values
    assert shown.exit_code == 0
    assert "  permanent: yes\n" in shown.output
    assert "  replayed: never\n" in shown.output
    assert "None" not in shown.output and ": 0\n" not in shown.output
    # and --json keeps what is stored
    raw = json.loads(invoke("dlq", "show", str(dl_id), "--config", config, "--json").output)
    assert raw["permanent"] == 1 and raw["replayed_at"] is None
    # When it has been replayed, show says when, and how many times
    (cli_env["state"] / "poison").unlink()
    assert invoke("dlq", "replay", str(dl_id), "--config", config).exit_code == 0
    shown = invoke("dlq", "show", str(dl_id), "--config", config).output
    assert re.search(r"  replayed: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(1 time\)\n", shown), shown


def test_a_relative_sqlite_path_in_the_file_is_relative_to_the_file(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a configuration in other/ with a relative SQLite path, as `hookline dev` writes it
    (tmp_path / "other").mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_config(tmp_path / "other" / "hookline.toml", redis_url, "sqlite:///.hookline/h.db")
    (tmp_path / "other" / ".hookline").mkdir()
    # When commands run with --config other/hookline.toml from its parent, then from elsewhere
    monkeypatch.chdir(tmp_path)
    assert invoke("db", "upgrade", "--config", "other/hookline.toml").exit_code == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = invoke("status", "--config", "../other/hookline.toml", "--json")
    # Then both use other/.hookline/h.db
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dead_letters"] == 0
    assert (tmp_path / "other" / ".hookline" / "h.db").exists()
    assert (
        not (tmp_path / ".hookline").exists()
        and not (tmp_path / "elsewhere" / ".hookline").exists()
    )
    # while HOOKLINE_DATABASE_URL, set in a shell, stays relative to the current directory
    monkeypatch.setenv("HOOKLINE_DATABASE_URL", "sqlite:///mine.db")
    assert load_settings("../other/hookline.toml").database_url == "sqlite:///mine.db"


def test_a_sqlite_file_that_cannot_be_opened_is_named(tmp_path: Path, redis_url: str) -> None:
    # Given a configuration whose SQLite file is in a folder that does not exist
    config = write_config(tmp_path / "hookline.toml", redis_url, "sqlite:///no-such-dir/h.db")
    # When a command needs the database
    result = CliRunner().invoke(main, ["status", "--config", str(config)])
    # Then one line names the file, and the exit status is 1 (the database cannot be reached)
    assert result.exit_code == 1
    assert result.stderr == (
        "hookline: database error: unable to open database file:"
        f" {tmp_path / 'no-such-dir' / 'h.db'} (does its folder exist?)\n"
    )


def test_send_refused_by_the_ingress_says_why_on_stderr(cli_env: dict[str, Any]) -> None:
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            answer = b'{"error": "invalid_signature"}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    # Given an ingress that refuses the signature (another secret configured there)
    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        # When `hookline send` posts to it
        result = CliRunner().invoke(
            main, ["send", "moncash", "--config", cli_env["config"], "--url", url]
        )
    finally:
        server.shutdown()
        server.server_close()
    # Then the answer is printed, exit status 1, and stderr names the cause in one line
    assert result.exit_code == 1
    assert result.stdout == '401 {"error": "invalid_signature"}\n'
    assert result.stderr == (
        f"hookline: {url}/webhooks/moncash refused the event: 401 invalid_signature\n"
    )

"""``hookline dev`` runs the console too, as a child process on the port after the ingress's,
with a token: the demo configuration's, or one generated for the run when the configuration
has none (a user's own file is never written to)."""

from __future__ import annotations

import json
import re
import signal
import socket
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hookline.dev import console_port, demo_config
from tests.helpers import SECRET_VALUES
from tests.processes import (
    env_for,
    free_dev_port,
    free_port,
    hookline,
    processes,
    start_dev,
)

pytestmark = pytest.mark.slow


def api_status(port: int, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_dev_runs_the_console_with_the_demo_configurations_token(tmp_path: Path) -> None:
    # Given the demo configuration `hookline dev` writes (it has a console token)
    redis_port = free_port()
    port = free_dev_port(redis_port)
    config = tmp_path / "hookline.toml"
    config.write_text(demo_config().replace("6390", str(redis_port)))
    token = tomllib.loads(config.read_text())["console"]["token"]
    SECRET_VALUES.append(token)
    assert len(token) >= 16
    with processes() as procs:
        # When `hookline dev` runs
        dev = start_dev(procs, tmp_path, port)
        out = (tmp_path / "dev.log").read_text()
        # Then it prints the console's login URL, on the port after the ingress's
        console = console_port(port)
        assert console == port + 1
        assert (
            f"console: http://127.0.0.1:{console}/login (log in with [console] token in"
            f" hookline.toml)" in out
        )
        assert token not in out.split("hookline is running", 1)[1]
        # And the console answers with that token, and refuses another
        status, body = api_status(console, token)
        assert status == 200 and body["workers_alive"] >= 0
        assert api_status(console, "x" * 24)[0] == 401
        # And Ctrl-C stops it with the rest
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
    assert not listening(console) and not listening(port)
    # And its whole output named the console's URL once, and held none of Redis's own lines:
    # those went to .hookline/redis.log
    out = (tmp_path / "dev.log").read_text()
    assert out.count(f"http://127.0.0.1:{console}") == 1, out
    assert "Redis is starting" not in out and "Redis version" not in out, out
    assert "Redis is starting" in (tmp_path / ".hookline" / "redis.log").read_text()


def test_dev_help_names_the_console_and_the_demo_configuration_it_writes() -> None:
    from click.testing import CliRunner

    from hookline.cli import main

    shown = CliRunner().invoke(main, ["dev", "--help"])
    assert shown.exit_code == 0
    text = " ".join(shown.output.split())
    assert "the console on the port after (its login URL printed)" in text
    assert "it writes a demo hookline.toml here" in text


def test_dev_generates_a_token_for_a_configuration_without_one_and_leaves_it_untouched(
    tmp_path: Path,
) -> None:
    # Given a user's own configuration, without [console]
    redis_port = free_port()
    port = free_dev_port(redis_port)
    text = demo_config().replace("6390", str(redis_port))
    text = (
        "# my own configuration\n"
        + re.sub(r"\[console\]\ntoken = .*\n", "", text).split("\n", 1)[1]
    )
    assert "[console]" not in text
    config = tmp_path / "hookline.toml"
    config.write_text(text)
    with processes() as procs:
        # When `hookline dev` runs
        dev = start_dev(procs, tmp_path, port)
        out = (tmp_path / "dev.log").read_text()
        # Then it prints the console's login URL and the token it generated for this run
        console = console_port(port)
        found = re.search(
            rf"console: http://127\.0\.0\.1:{console}/login \(token for this run: (\S+)\)", out
        )
        assert found, out
        token = found.group(1)
        SECRET_VALUES.append(token)
        # And the console answers with it
        assert api_status(console, token)[0] == 200
        # And the configuration file is exactly as it was
        assert config.read_text() == text
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
    assert not listening(console)


def test_dev_refuses_at_once_when_the_consoles_port_is_taken(tmp_path: Path) -> None:
    # Given something listening on the port after the ingress's
    redis_port = free_port()
    port = free_dev_port(redis_port)
    (tmp_path / "hookline.toml").write_text(demo_config().replace("6390", str(redis_port)))
    with socket.socket() as taken, processes() as procs:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        # When `hookline dev` starts
        dev = procs.start(
            hookline("dev", "--port", str(port)), env_for(), tmp_path / "dev.log", cwd=tmp_path
        )
        # Then it stops at once, one line naming the port, and starts nothing
        assert dev.wait(60) == 2
        log = (tmp_path / "dev.log").read_text()
        assert f"hookline: port {port + 1} (for the console) is in use (pid " in log
        assert "hookline is running" not in log
        assert not listening(port) and not listening(redis_port)

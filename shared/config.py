"""Configuration: a TOML file, ``${NAME}`` strings read from the environment, and two
environment overrides. Every mistake is a :class:`~shared.errors.ConfigError` that names the key,
because a typo must never switch verification off.

A relative SQLite path in the file (``sqlite:///.hookline/hookline.db``) is relative to the
file's folder, so every command finds the same database whatever its current directory; one in
``$HOOKLINE_DATABASE_URL`` stays relative to the current directory, as a shell user expects."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import redisconn
from shared.errors import ConfigError
from shared.locators import Locator, parse_locator
from shared.signatures import SCHEMES, Scheme, SchemeConfig, build_scheme

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# sqlite:///relative/path[?query] (an absolute path has a fourth slash)
_RELATIVE_SQLITE = re.compile(r"(sqlite(?:\+\w+)?:///)([^/?][^?]*)(\?.*)?", re.S)
DEFAULT_CONFIG_FILE = "hookline.toml"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///hookline.db"

#: as ``shared.keys.MAX_SHARDS`` (not imported: the keys import RQ, the configuration does not)
MAX_SHARDS = 256

_TOP_KEYS = {
    "redis_url",
    "redis_shards",
    "database_url",
    "queue",
    "ingest",
    "worker",
    "archive",
    "console",
    "telemetry",
    "logging",
    "sources",
}
_COMMON_SOURCE_KEYS = {
    "scheme",
    "secrets",
    "tolerance_seconds",
    "allowed_ips",
    "event_id",
    "event_type",
}


@dataclass(frozen=True)
class IngestSettings:
    """``[ingest]``: the front door."""

    max_body_bytes: int = 1_048_576
    dedup_ttl_seconds: int = 259_200
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: a client trickling its body is answered 408 and dropped after this long
    read_timeout_seconds: float = 8.0
    #: Redis slower than this is treated as down: the answer is 503 well within 5 s
    redis_timeout_seconds: float = 1.0
    #: one line per request (method, path, status, size, time; never headers)
    access_log: bool = True
    #: 202 only once this many replicas hold the claim and the job (Redis WAIT); 0: at once
    ack_replicas: int = 0
    #: how long to wait for them; longer is 503 + Retry-After (the claim stays: a retry by the
    #: provider is a duplicate, or is accepted again on a new primary)
    ack_replicas_timeout_ms: int = 200
    #: also wait for the primary's append-only file to be fsynced (WAITAOF, Redis 7.2+)
    ack_fsync: bool = False
    #: answer 503 + Retry-After once Redis's memory is this full (of ``maxmemory``), so the
    #: workers and the console keep room to work; 0: only when Redis itself refuses
    shed_at_memory_percent: int = 95


@dataclass(frozen=True)
class WorkerSettings:
    """``[worker]``: retries, timeouts and the handler modules to import."""

    max_attempts: int = 8
    backoff_seconds: tuple[int, ...] = (5, 30, 120, 600, 1800, 3600, 7200)
    job_timeout_seconds: int = 60
    handlers: tuple[str, ...] = ()
    builtin_handlers: bool = True
    #: how long an applied event's job stays in Redis (RQ's finished jobs, results and
    #: registry); 0: it leaves Redis once its row is committed (the row is the record)
    keep_finished_seconds: int = 0


@dataclass(frozen=True)
class ArchiveSettings:
    """``[archive]``: the event log."""

    #: days the bodies and headers of processed and ignored events are kept (0: not kept; the
    #: events' rows are kept either way)
    retention_days: int = 7


@dataclass(frozen=True)
class ConsoleSettings:
    """``[console]``: the operators' web console (``hookline console``)."""

    #: what operators log in with, and scripts send as ``Authorization: Bearer``; keep it in
    #: the environment (``"${HOOKLINE_CONSOLE_TOKEN}"``). No token: the console does not start.
    token: str | None = None


@dataclass(frozen=True)
class TelemetrySettings:
    """``[telemetry]``: OpenTelemetry traces (the optional extra ``hookline[otel]``); where
    they go is set only by the standard ``OTEL_*`` environment variables."""

    traces: bool = False


#: what ``[logging] format`` may be
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LoggingSettings:
    """``[logging]``: what the processes write to stderr."""

    #: ``"text"``, or ``"json"``: one JSON object a line
    format: str = "text"


#: a console token shorter than this is refused: it guards replays and purges
MIN_TOKEN_LENGTH = 16
#: the environment variable read when the file has no ``[console] token``
CONSOLE_TOKEN_VARIABLE = "HOOKLINE_CONSOLE_TOKEN"  # noqa: S105 - a name, not a secret


@dataclass(frozen=True)
class SourceSettings:
    """``[sources.NAME]``: one provider sending to ``POST /webhooks/NAME``."""

    name: str
    scheme: Scheme
    allowed_ips: tuple[IPNetwork, ...]
    event_id: Locator
    event_type: Locator | None


@dataclass(frozen=True)
class Settings:
    """The whole configuration, validated."""

    redis_url: str = DEFAULT_REDIS_URL
    #: the keys' shards (``shared.keys.Layout``): each one hash slot of a Redis Cluster
    redis_shards: int = 1
    database_url: str = DEFAULT_DATABASE_URL
    queue: str = "hookline"
    ingest: IngestSettings = field(default_factory=IngestSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    sources: Mapping[str, SourceSettings] = field(default_factory=dict)
    path: Path | None = None


def find_config(explicit: str | os.PathLike[str] | None) -> Path | None:
    """``--config``, else ``$HOOKLINE_CONFIG``, else ``./hookline.toml`` if it exists."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("HOOKLINE_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(
    explicit: str | os.PathLike[str] | None = None,
    *,
    required: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Find, read and validate the configuration; ``ConfigError`` names what is wrong."""
    env = os.environ if environ is None else environ
    path = find_config(explicit)
    if path is None:
        if required:
            raise ConfigError(
                "no configuration: pass --config, set HOOKLINE_CONFIG"
                f" or create ./{DEFAULT_CONFIG_FILE}"
            )
        return settings_from_mapping({}, environ=env)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"configuration file not found: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read configuration file {path}: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    return settings_from_mapping(raw, environ=env, path=path)


def settings_from_mapping(
    raw: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Settings:
    """Validate an already-parsed TOML document."""
    env = os.environ if environ is None else environ
    data = _expand(raw, env, "")
    _no_unknown(data, _TOP_KEYS, "")
    redis_url = env.get("HOOKLINE_REDIS_URL") or _get(data, "redis_url", str, DEFAULT_REDIS_URL)
    redisconn.validate(redis_url)
    database_url = env.get("HOOKLINE_DATABASE_URL") or _relative_to(
        _get(data, "database_url", str, DEFAULT_DATABASE_URL), path
    )
    sources_raw = _get(data, "sources", dict, {})
    sources = {name: _source(name, body) for name, body in sources_raw.items()}
    redis_shards = _get(data, "redis_shards", int, 1)
    if not 1 <= redis_shards <= MAX_SHARDS:
        raise ConfigError(f"redis_shards must be 1 to {MAX_SHARDS}")
    return Settings(
        redis_url=redis_url,
        redis_shards=redis_shards,
        database_url=database_url,
        queue=_get(data, "queue", str, "hookline"),
        ingest=_checked_ingest(_ingest(_get(data, "ingest", dict, {}))),
        worker=_worker(_get(data, "worker", dict, {})),
        archive=_archive(_get(data, "archive", dict, {})),
        console=_console(_get(data, "console", dict, {}), env),
        telemetry=_telemetry(_get(data, "telemetry", dict, {})),
        logging=_logging(_get(data, "logging", dict, {})),
        sources=sources,
        path=path,
    )


def _relative_to(database_url: str, config_path: Path | None) -> str:
    """A relative SQLite path in the configuration file, made absolute against its folder."""
    match = _RELATIVE_SQLITE.fullmatch(database_url)
    if config_path is None or match is None:
        return database_url
    prefix, database, query = match.groups()
    if database == ":memory:" or "uri=true" in (query or ""):
        return database_url
    return f"{prefix}{os.path.abspath(config_path.parent / database)}{query or ''}"


def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Replace every ``"${NAME}"`` string by the environment variable NAME."""
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        match = _ENV_REF.fullmatch(value)
        if match:
            name = match.group(1)
            if name not in env or not env[name]:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return env[name]
    return value


def _no_unknown(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{prefix}unknown key {unknown[0]!r}")


def _get(data: Mapping[str, Any], key: str, kind: type, default: Any, where: str = "") -> Any:
    if key not in data:
        return default
    value = data[key]
    # bool is an int in Python; a number where a flag is expected (or the reverse) is a mistake
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = f"{where}.{key}" if where else key
        raise ConfigError(f"{name} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _positive(value: int | float, name: str) -> Any:
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


def _at_least(value: int, minimum: int, name: str) -> int:
    if value < minimum:
        raise ConfigError(f"{name} must be {minimum} or more")
    return value


def _networks(values: Any, name: str) -> tuple[IPNetwork, ...]:
    if not isinstance(values, list):
        raise ConfigError(f"{name} must be a list of addresses or CIDRs")
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(str(v), strict=False))
        except ValueError as err:
            raise ConfigError(f"{name}: {v!r} is not an address or CIDR") from err
    return tuple(out)


def _ingest(data: Mapping[str, Any]) -> IngestSettings:
    w = "ingest"
    _no_unknown(data, IngestSettings.__dataclass_fields__, w)
    d = IngestSettings()
    return IngestSettings(
        max_body_bytes=_positive(
            _get(data, "max_body_bytes", int, d.max_body_bytes, w), "ingest.max_body_bytes"
        ),
        dedup_ttl_seconds=_positive(
            _get(data, "dedup_ttl_seconds", int, d.dedup_ttl_seconds, w),
            "ingest.dedup_ttl_seconds",
        ),
        trusted_proxies=_networks(data.get("trusted_proxies", []), "ingest.trusted_proxies"),
        read_timeout_seconds=_positive(
            float(_get(data, "read_timeout_seconds", (int, float), 8.0, w)),  # type: ignore[arg-type]
            "ingest.read_timeout_seconds",
        ),
        redis_timeout_seconds=_positive(
            float(_get(data, "redis_timeout_seconds", (int, float), 1.0, w)),  # type: ignore[arg-type]
            "ingest.redis_timeout_seconds",
        ),
        access_log=_get(data, "access_log", bool, d.access_log, w),
        ack_replicas=_at_least(
            _get(data, "ack_replicas", int, d.ack_replicas, w), 0, "ingest.ack_replicas"
        ),
        ack_replicas_timeout_ms=_positive(
            _get(data, "ack_replicas_timeout_ms", int, d.ack_replicas_timeout_ms, w),
            "ingest.ack_replicas_timeout_ms",
        ),
        ack_fsync=_get(data, "ack_fsync", bool, d.ack_fsync, w),
        shed_at_memory_percent=_percent(
            _get(data, "shed_at_memory_percent", int, d.shed_at_memory_percent, w),
            "ingest.shed_at_memory_percent",
        ),
    )


def _percent(value: int, name: str) -> int:
    if not 0 <= value <= 100:
        raise ConfigError(f"{name} must be between 0 (off) and 100, not {value}")
    return value


def _checked_ingest(settings: IngestSettings) -> IngestSettings:
    if settings.ack_replicas_timeout_ms >= settings.redis_timeout_seconds * 1000:
        raise ConfigError(
            "ingest.ack_replicas_timeout_ms must be shorter than ingest.redis_timeout_seconds"
        )
    return settings


def _worker(data: Mapping[str, Any]) -> WorkerSettings:
    w = "worker"
    _no_unknown(data, WorkerSettings.__dataclass_fields__, w)
    d = WorkerSettings()
    backoff = _get(data, "backoff_seconds", list, list(d.backoff_seconds), w)
    if not backoff or not all(
        isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in backoff
    ):
        raise ConfigError(
            "worker.backoff_seconds must be a non-empty list of non-negative integers"
        )
    handlers = _get(data, "handlers", list, [], w)
    if not all(isinstance(h, str) and h for h in handlers):
        raise ConfigError("worker.handlers must be a list of module names")
    return WorkerSettings(
        max_attempts=_positive(
            _get(data, "max_attempts", int, d.max_attempts, w), "worker.max_attempts"
        ),
        backoff_seconds=tuple(backoff),
        job_timeout_seconds=_positive(
            _get(data, "job_timeout_seconds", int, d.job_timeout_seconds, w),
            "worker.job_timeout_seconds",
        ),
        handlers=tuple(handlers),
        builtin_handlers=_get(data, "builtin_handlers", bool, d.builtin_handlers, w),
        keep_finished_seconds=_at_least(
            _get(data, "keep_finished_seconds", int, d.keep_finished_seconds, w),
            0,
            "worker.keep_finished_seconds",
        ),
    )


def _archive(data: Mapping[str, Any]) -> ArchiveSettings:
    w = "archive"
    _no_unknown(data, ArchiveSettings.__dataclass_fields__, w)
    days = _get(data, "retention_days", int, ArchiveSettings.retention_days, w)
    if days < 0:
        raise ConfigError("archive.retention_days must be 0 or more")
    return ArchiveSettings(retention_days=days)


def _console(data: Mapping[str, Any], env: Mapping[str, str]) -> ConsoleSettings:
    w = "console"
    _no_unknown(data, ConsoleSettings.__dataclass_fields__, w)
    # HOOKLINE_CONSOLE_TOKEN stands in for a file without one (hookline dev passes the token
    # it generated this way, so a user's own file is never written to)
    token = _get(data, "token", str, None, w) or env.get(CONSOLE_TOKEN_VARIABLE) or None
    if token is not None and len(token.strip()) < MIN_TOKEN_LENGTH:
        # never echo the token itself
        raise ConfigError(f"console.token must be at least {MIN_TOKEN_LENGTH} characters")
    return ConsoleSettings(token=token)


def _telemetry(data: Mapping[str, Any]) -> TelemetrySettings:
    w = "telemetry"
    _no_unknown(data, TelemetrySettings.__dataclass_fields__, w)
    traces = _get(data, "traces", bool, TelemetrySettings.traces, w)
    if traces:
        missing = _missing_otel()
        if missing:
            raise ConfigError(
                f"[telemetry] traces = true needs the OpenTelemetry packages ({missing} is not"
                " installed): pip install 'hookline[otel]'"
            )
    return TelemetrySettings(traces=traces)


#: what ``[telemetry] traces`` imports (the ``otel`` extra)
OTEL_MODULES = ("opentelemetry.trace", "opentelemetry.sdk.trace")


def _missing_otel() -> str | None:
    """The first OpenTelemetry module that cannot be imported, or ``None``."""
    import importlib

    for module in OTEL_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def _logging(data: Mapping[str, Any]) -> LoggingSettings:
    w = "logging"
    _no_unknown(data, LoggingSettings.__dataclass_fields__, w)
    fmt = _get(data, "format", str, LoggingSettings.format, w)
    if fmt not in LOG_FORMATS:
        raise ConfigError(f'logging.format must be "text" or "json", not {fmt[:40]!r}')
    return LoggingSettings(format=fmt)


def _source(name: str, data: Any) -> SourceSettings:
    w = f"sources.{name}"
    if not _SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            f"[{w}]: a source name is 1-64 letters, digits, '.', '_' or '-' (it is a URL path"
            " segment and part of Redis keys)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"[{w}] must be a table")
    if "scheme" not in data:
        raise ConfigError(f"[{w}] has no scheme")
    scheme_name = _get(data, "scheme", str, None, w)
    cls = SCHEMES.get(scheme_name)
    if cls is None:
        raise ConfigError(f"source {name!r}: unknown scheme {scheme_name!r}")
    _no_unknown(data, _COMMON_SOURCE_KEYS | cls.option_keys, w)
    secrets = _get(data, "secrets", list, [], w)
    if not all(isinstance(s, str) for s in secrets):
        raise ConfigError(f"{w}.secrets must be a list of strings")
    tolerance = _positive(_get(data, "tolerance_seconds", int, 300, w), f"{w}.tolerance_seconds")
    allowed_ips = _networks(data.get("allowed_ips", []), f"{w}.allowed_ips")
    if cls.needs_allowed_ips and not allowed_ips:
        raise ConfigError(f"source {name!r}: scheme {scheme_name!r} needs allowed_ips")
    options = {k: data[k] for k in cls.option_keys if k in data}
    scheme = build_scheme(
        scheme_name,
        SchemeConfig(
            source=name, secrets=tuple(secrets), tolerance_seconds=tolerance, options=options
        ),
    )
    event_id = parse_locator(_get(data, "event_id", str, cls.default_event_id, w), f"{w}.event_id")
    type_raw = _get(data, "event_type", str, cls.default_event_type, w)
    event_type = parse_locator(type_raw, f"{w}.event_type") if type_raw else None
    return SourceSettings(
        name=name, scheme=scheme, allowed_ips=allowed_ips, event_id=event_id, event_type=event_type
    )

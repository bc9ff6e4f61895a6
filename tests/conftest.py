"""Shared fixtures: real Redis and PostgreSQL where behaviour depends on them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.logs import JsonFormatter
from shared.migrate import upgrade
from tests import services


@pytest.fixture(scope="session")
def redis_base() -> Iterator[str]:
    with services.redis_server() as (base, _server):
        yield base


@pytest.fixture(scope="session")
def redis_session_url(redis_base: str) -> Iterator[str]:
    url, token = services.lock_database(redis_base)
    yield url
    services.unlock_database(url, token)


@pytest.fixture
def redis_url(redis_session_url: str) -> Iterator[str]:
    """This run's Redis database, emptied before each test."""
    services.flush_except_lock(redis_session_url)
    yield redis_session_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_session_url() -> Iterator[str | None]:
    with services.postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_session_url: str | None) -> Iterator[str]:
    """A migrated, empty PostgreSQL database for this test."""
    if postgres_session_url is None:
        services.missing("PostgreSQL is not reachable at 127.0.0.1:5432")
    assert postgres_session_url is not None
    from sqlalchemy import text

    from shared.db import make_engine

    upgrade(postgres_session_url)
    engine = make_engine(postgres_session_url)
    with engine.begin() as conn:
        tables = "event_bodies, event_steps, webhook_events, payments, dead_letters"
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    engine.dispose()
    yield postgres_session_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hookline.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each behaviour that depends on the database runs on both backends."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    value: Any = request.getfixturevalue(name)
    return str(value)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's own configuration."""
    for name in (
        "HOOKLINE_CONFIG",
        "HOOKLINE_REDIS_URL",
        "HOOKLINE_DATABASE_URL",
        "HOOKLINE_CONSOLE_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("HOOKLINE_TESTING", "1")


class _LogCollector(logging.Handler):
    """Every log line the suite produces, to check that none carries a secret: each record as
    its message and as the JSON line ``[logging] format = "json"`` writes (with the fields it
    adds: source, event id, job id, trace id, an exception's traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:
            self.lines.append(str(record.msg))
        try:
            self.lines.append(self.json.format(record))
        except Exception as err:  # a line the JSON format cannot write is a failure too
            self.lines.append(f"JSON FORMAT FAILED: {err!r}")


_COLLECTOR = _LogCollector()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(_COLLECTOR)
    for name in ("hookline", "aiohttp", "rq", "workers", "shared", "ingest"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any log line of the whole suite holds a configured secret."""
    from tests.helpers import SECRET_VALUES

    leaks = [(s, line) for line in _COLLECTOR.lines for s in SECRET_VALUES if s in line]
    broken = [line for line in _COLLECTOR.lines if line.startswith("JSON FORMAT FAILED")]
    if broken:
        print(f"\nLOG LINE NOT WRITABLE AS JSON: {broken[0][:200]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if leaks:
        secret, line = leaks[0]
        print(f"\nLOG LEAK: a log line holds secret {secret[:4]}...: {line[:200]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

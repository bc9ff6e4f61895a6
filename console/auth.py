"""Who may use the console: the token check, sessions, CSRF tokens and the slowdown of wrong
tokens.

- The token (``[console] token``) is compared in constant time (both sides hashed first, so
  not even its length shows in the timing) and never stored anywhere but the settings: a page
  logs in once through a form and gets a random session id in an HttpOnly, SameSite=Strict
  cookie, mapped to its session here, in the console's memory (a restart logs everyone out).
- Each session has its CSRF token, sent back in a hidden field by every form that changes
  something; the login form has one of its own (a nonce in a short-lived cookie and the form).
- Wrong tokens from one remote address are answered one at a time, each after a delay that
  doubles with every wrong token in a row (:class:`Throttle`), on the login form and the API
  alike; a right token resets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("hookline.console")

#: the session id's cookie, and the login form's nonce cookie
SESSION_COOKIE = "hookline_console_session"
LOGIN_COOKIE = "hookline_console_login"
#: a session unused this long is gone; none lives longer than SESSION_MAX_SECONDS
SESSION_IDLE_SECONDS = 8 * 3600
SESSION_MAX_SECONDS = 24 * 3600
#: sessions kept at most (the oldest go first): a flood of logins cannot grow memory
MAX_SESSIONS = 10_000


def token_matches(given: str | None, expected: str) -> bool:
    """Constant time, whatever ``given`` holds (its length included)."""
    if given is None:
        return False
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(a, b)


def same_secret(given: object, expected: str) -> bool:
    """A CSRF token or a nonce as sent back by a form."""
    return isinstance(given, str) and token_matches(given, expected)


@dataclass
class Session:
    """A browser logged in."""

    id: str
    csrf: str
    created: float
    seen: float
    #: one-shot messages for the next page ("replay queued")
    flash: list[str] = field(default_factory=list)


class Sessions:
    """Session ids mapped to sessions, in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > SESSION_IDLE_SECONDS or now - session.created > SESSION_MAX_SECONDS:
            del self._sessions[session_id]
            return None
        session.seen = now
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)


@dataclass
class _Failures:
    count: int
    last: float


class Throttle:
    """Wrong tokens slowed down per remote address.

    Attempts from one address are checked one at a time; a wrong one is answered only after
    ``base * 2 ** (n - 1)`` seconds (n wrong tokens in a row), at most ``ceiling``, and the
    next attempt from that address waits for that answer. So one address gets at most one
    guess per ``ceiling`` seconds once it has failed a few times, however many connections it
    opens. A right token resets the address; a failure is forgotten after ``forget_after``
    seconds without another. At most ``max_addresses`` are remembered (the oldest go first).
    """

    def __init__(
        self,
        base: float = 0.5,
        ceiling: float = 10.0,
        forget_after: float = 900.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.ceiling = ceiling
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def delay(self, failures: int) -> float:
        """Seconds before answering the ``failures``-th wrong token in a row."""
        if failures <= 0:
            return 0.0
        return float(min(self.base * 2 ** min(failures - 1, 30), self.ceiling))

    def failures(self, address: str) -> int:
        found = self._failures.get(address)
        if found is None:
            return 0
        if self._clock() - found.last > self.forget_after:
            del self._failures[address]
            return 0
        return found.count

    async def attempt(self, address: str, given: str | None, expected: str) -> bool:
        """Whether ``given`` is the token; a wrong one is answered after its delay."""
        lock = self._locks.get(address)
        if lock is None:
            lock = self._locks[address] = asyncio.Lock()
        try:
            async with lock:
                if token_matches(given, expected):
                    self._failures.pop(address, None)
                    return True
                n = self._fail(address)
                wait = self.delay(n)
                # the address and the count only: never what was sent
                log.warning(
                    "console: wrong token from %s (%d in a row; answered after %.1f s)",
                    address,
                    n,
                    wait,
                )
                await asyncio.sleep(wait)
                return False
        finally:
            if not lock.locked() and address not in self._failures:
                self._locks.pop(address, None)

    def _fail(self, address: str) -> int:
        n = self.failures(address) + 1
        self._failures[address] = _Failures(n, self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            gone, _ = self._failures.popitem(last=False)
            lock = self._locks.get(gone)
            if lock is not None and not lock.locked():
                del self._locks[gone]
        return n

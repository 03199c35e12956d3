"""The local registry's users: an htpasswd file of bcrypt hashes (`htpasswd -B`), re-read
when it changes. bcrypt is slow on purpose, so checks run in two worker threads of their
own (never on a loop that serves, never in the store's), a flood of logins beyond what
waits for them is refused at once, and answers are remembered a while: a good password
is checked once, a wrong one repeated costs nothing. An unknown user costs a check
against a dummy hash too, so timing does not tell which names exist."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt

from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.local.ports import LocalError

log = logging.getLogger(__name__)

_RECHECK_S = 2.0
_REMEMBERED = 1024
_GOOD_FOR_S = 300.0
_BAD_FOR_S = 60.0
_WORKERS = 2
_WAITING = 32
_BCRYPT_BYTES = 72
"""bcrypt reads no further (and the library refuses longer input): `htpasswd -B` cuts
the password there too."""
_DUMMY = b"$2b$05$f9tmJrgFVlDK4ztiZT79cudE///SktPQt0nALMbOp62s7VZsoyMni"


class Htpasswd:
    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._users: dict[str, bytes] = {}
        self._seen: tuple[float, int] | None = None
        self._checked = -_RECHECK_S
        self._answers: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()
        self._lock = threading.Lock()
        """Guards the users and the remembered answers (checks run in several threads)."""
        self._pool: ThreadPoolExecutor | None = None
        self._waiting = 0
        self._unusable = LogThrottle(log, interval_s=300.0)

    @property
    def configured(self) -> bool:
        return self._path is not None

    def known(self, user: str) -> bool:
        with self._lock:
            return user in self._load()

    async def verify(self, user: str, password: str) -> bool:
        """`check` in a worker thread of its own; 429 when too many wait already."""
        with self._lock:
            if self._waiting >= _WAITING:
                raise LocalError(429, "TOOMANYREQUESTS", "too many logins at once; try again")
            self._waiting += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="bcrypt")
            pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, self.check, user,
                                                                    password)  # fmt: skip
        finally:
            with self._lock:
                self._waiting -= 1

    def check(self, user: str, password: str) -> bool:
        secret = password.encode()[:_BCRYPT_BYTES]
        with self._lock:
            hashed = self._load().get(user)
            key = hashlib.sha256(b"\0".join((user.encode(), secret, hashed or b""))).digest()
            remembered = self._answers.get(key)
        now = self._clock()
        if remembered is not None and now - remembered[1] < (_GOOD_FOR_S if remembered[0]
                                                             else _BAD_FOR_S):  # fmt: skip
            return remembered[0]
        ok = self._bcrypt(user, secret, hashed)
        with self._lock:
            self._answers[key] = (ok, now)
            self._answers.move_to_end(key)
            while len(self._answers) > _REMEMBERED:
                self._answers.popitem(last=False)
        return ok

    def _bcrypt(self, user: str, secret: bytes, hashed: bytes | None) -> bool:
        try:
            return bcrypt.checkpw(secret, hashed or _DUMMY) and hashed is not None
        except ValueError:  # not a bcrypt hash: that user cannot log in
            self._unusable.warning(user, "local htpasswd-unusable-hash %s", fields(user=user))
            return False

    def _load(self) -> dict[str, bytes]:
        """The users, re-read if the file changed (the caller holds the lock)."""
        now = self._clock()
        if self._path is None or now - self._checked < _RECHECK_S:
            return self._users
        self._checked = now
        try:
            stat = self._path.stat()
            seen = (stat.st_mtime, stat.st_size)
            if seen != self._seen:
                self._users, self._seen = _parse(self._path.read_text("utf-8")), seen
                self._answers.clear()
        except (OSError, UnicodeDecodeError) as e:  # keep the users known so far
            log.error("local htpasswd-unreadable %s", fields(path=self._path, error=e))
        return self._users


def _parse(text: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for line in text.splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            users[user] = hashed.strip().encode()
    return users

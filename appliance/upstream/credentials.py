"""regcache's own credentials for registries, for requests whose client sends none.

Secrets are read from their file or environment variable when used (rotation needs no
restart), or from a helper command whose answer is cached until shortly before it
expires (ECR-style 12-hour passwords). Nothing here is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config.model import CredentialsConfig

log = logging.getLogger(__name__)

_HELPER_TIMEOUT_S = 30.0
_EXPIRY_MARGIN_S = 60.0


class CredentialError(RuntimeError):
    """The configured secret could not be read or the helper failed."""


@dataclass(frozen=True, slots=True)
class Secret:
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def basic(self) -> str:
        if self.username is None or self.password is None:
            raise CredentialError("no username and password configured")
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


class CredentialSource:
    def __init__(
        self,
        config: CredentialsConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        helper_timeout_s: float = _HELPER_TIMEOUT_S,
    ) -> None:
        self.method = config.method
        self._config = config
        self._clock = clock
        self._helper_secret: Secret | None = None
        self._helper_until = 0.0
        self._helper_failure: str | None = None
        self._helper_failed_at = 0.0
        self._helper_timeout_s = helper_timeout_s
        self._lock = asyncio.Lock()
        self.helper_runs = 0

    async def secret(self) -> Secret:
        if self._config.helper:
            return await self._from_helper()
        try:
            return Secret(
                username=self._config.username,
                password=self._config.password.read() if self._config.password else None,
                token=self._config.token.read() if self._config.token else None,
            )
        except OSError as e:
            raise CredentialError(f"cannot read a configured secret: {e.strerror or e}") from e

    async def authorization(self) -> str | None:
        """The header to send up front: Basic or a static bearer token. None for the token
        flow, which first needs the registry's challenge."""
        secret = await self.secret()
        if self.method == "basic":
            return secret.basic()
        if self.method == "static":
            if not secret.token:
                raise CredentialError("no token configured")
            return f"Bearer {secret.token}"
        return None

    async def _from_helper(self) -> Secret:
        asked = self._clock()
        async with self._lock:
            if self._helper_secret is not None and self._clock() < self._helper_until:
                return self._helper_secret
            if self._helper_failure is not None and self._helper_failed_at >= asked:
                # The run this caller waited behind failed: share its answer rather than
                # queue one more run (a stuck helper would cost each waiter the timeout).
                raise CredentialError(self._helper_failure)
            try:
                secret, lifetime_s = await self._run_helper()
            except CredentialError as e:
                self._helper_failure, self._helper_failed_at = str(e), self._clock()
                raise
            self._helper_secret, self._helper_failure = secret, None
            self._helper_until = self._clock() + lifetime_s
            return secret

    async def _run_helper(self) -> tuple[Secret, float]:
        self.helper_runs += 1
        command = self._config.helper[0]
        try:
            # Its own session: on a timeout its whole process group (whatever it forked)
            # is killed, not only the process regcache started.
            proc = await asyncio.create_subprocess_exec(
                *self._config.helper,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise CredentialError(f"credential helper {command!r} failed: {e}") from e
        try:
            async with asyncio.timeout(self._helper_timeout_s):
                out, _ = await proc.communicate()
        except TimeoutError as e:
            log.error(
                "credentials helper-timeout command=%s timeout_s=%g action=killed",
                command,
                self._helper_timeout_s,
            )
            raise CredentialError(
                f"credential helper {command!r} gave no answer in {self._helper_timeout_s:g} s"
            ) from e
        finally:
            await _end(proc)
        if proc.returncode != 0:
            raise CredentialError(f"credential helper {command!r} exited {proc.returncode}")
        try:
            data = json.loads(out)
            secret = Secret(data.get("username"), data.get("password"), data.get("token"))
            expires = data.get("expires_in_s")
        except (ValueError, AttributeError) as e:
            raise CredentialError("credential helper did not print a JSON object") from e
        lifetime = (
            float(expires) - _EXPIRY_MARGIN_S
            if isinstance(expires, int | float)
            else float(self._config.helper_refresh_s)
        )
        log.info("credentials helper-ran command=%s valid_s=%d", command, lifetime)
        return secret, max(lifetime, 1.0)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill a helper still running (timed out, or its caller cancelled) with everything in
    its process group, and reap it: no stuck helper, child or zombie is left behind."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.shield(proc.wait())

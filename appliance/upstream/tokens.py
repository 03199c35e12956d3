"""Bearer tokens regcache fetches itself: anonymous ones for registries it reaches by
redirect, and ones for its own configured credentials.

Tokens are short-lived and repository-scoped: cached per (credential, realm, service,
scope) until `expires_in` (60 s when absent, as the token spec says) minus a margin.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from appliance.kit.bounded import BoundedMap
from appliance.oci.challenge import bearer

log = logging.getLogger(__name__)

_DEFAULT_EXPIRES_S = 60
_MARGIN_S = 10
_MAX_ENTRIES = 1024

GetJson = Callable[[str, str | None], Awaitable[tuple[int, bytes]]]
"""(url, Authorization or None) → (status, body)."""


class Tokens:
    def __init__(self, get_json: GetJson, clock: Callable[[], float] = time.monotonic) -> None:
        self._get_json = get_json
        self._clock = clock
        self._cache: BoundedMap[tuple[str, str, str, str], str] = BoundedMap(
            _MAX_ENTRIES, clock=clock
        )

    async def for_challenge(self, header: str, basic: str | None = None) -> str | None:
        """A token answering the Bearer challenge in `header`, fetched with `basic`
        (an `Authorization: Basic` value) or anonymously."""
        challenge = bearer(header)
        if challenge is None:
            return None
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope", "")
        who = hashlib.sha256(basic.encode()).hexdigest()[:16] if basic else ""
        key = (who, realm, service, scope)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        url = f"{realm}?{urlencode(query)}" if query else realm
        status, body = await self._get_json(url, basic)
        if status != 200:
            log.info("upstream token refused realm=%s status=%d own=%s", realm, status, bool(basic))
            return None
        try:
            data = json.loads(body)
            token = str(data.get("token") or data["access_token"])
            expires_s = int(data.get("expires_in") or _DEFAULT_EXPIRES_S)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # not a JSON object
            log.info("upstream token unusable realm=%s error=%s", realm, e)
            return None
        self._cache.set(key, token, ttl_s=max(expires_s - _MARGIN_S, 1))
        return token

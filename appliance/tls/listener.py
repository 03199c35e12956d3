"""The HTTPS listener: reads each ClientHello, picks the leaf by SNI, then starts TLS.

Refused names get a real `unrecognized_name` alert (see clienthello.py for why this is
not left to an SNI callback); accepted connections are handed, TLS-wrapped, to the HTTP
protocol factory (aiohttp's server), which knows nothing about certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence

from appliance.config.model import Endpoint
from appliance.kit.listen import ServingLoop, bind
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn
from appliance.tls.clienthello import (
    ALERT_DECODE_ERROR,
    ALERT_INTERNAL_ERROR,
    ALERT_UNRECOGNIZED_NAME,
    MAX_HELLO_BYTES,
    ClientHello,
    MalformedHello,
    NotTls,
    parse_client_hello,
)

log = logging.getLogger(__name__)

ContextSelector = Callable[[str | None], ssl.SSLContext | None]
_PARTIAL_HELLO_POLL_S = 0.01
_ACCEPT_BACKOFF_S = 0.1


class TlsListener:
    def __init__(
        self,
        select: ContextSelector,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        handshake_timeout_s: float = 10.0,
        max_handshakes: int = 1024,
        other_loops: Sequence[ServingLoop] = (),
    ) -> None:
        self._select = select
        self._factory = protocol_factory
        # Connections are spread round-robin over this loop and `other_loops`.
        self._targets: Iterator[ServingLoop | None] = itertools.cycle([None, *other_loops])
        self._timeout_s = handshake_timeout_s
        self._handshakes = asyncio.Semaphore(max_handshakes)
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_errors = LogThrottle(log, interval_s=30.0)

    async def start(self, endpoints: tuple[Endpoint, ...]) -> None:
        for endpoint in endpoints:
            try:
                sock = bind(endpoint, socket.SOCK_STREAM)
            except OSError as e:
                raise OSError(
                    e.errno, f"cannot listen for HTTPS on {endpoint}: {e.strerror}"
                ) from e
            self._sockets.append(sock)
            self._track(spawn(self._accept(sock), name=f"https-accept {endpoint}"))
            log.info("https listening endpoint=%s", endpoint)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._sockets:  # after the accept loops stopped watching them
            sock.close()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and friends: back off, never stop listening
                self._accept_errors.warning("accept", "https accept failed error=%s", e)
                await asyncio.sleep(_ACCEPT_BACKOFF_S)
                continue
            if self._handshakes.locked():
                conn.close()  # shed load before TLS costs us anything
                continue
            self._track(spawn(self._serve(conn), name="https-handshake"))

    async def _serve(self, conn: socket.socket) -> None:
        async with self._handshakes:
            try:
                context = await self._choose(conn)
                if context is None:
                    conn.close()
                    return
                target = next(self._targets)
                loop, factory = target or (asyncio.get_running_loop(), self._factory)
                handshake = loop.connect_accepted_socket(
                    factory, conn, ssl=context, ssl_handshake_timeout=self._timeout_s
                )
                if target is None:
                    await handshake
                else:
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handshake, loop))
            except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
                log.debug("tls handshake failed error=%s", e)
                conn.close()

    async def _choose(self, conn: socket.socket) -> ssl.SSLContext | None:
        """The leaf context for this connection, or None after telling the client why."""
        try:
            async with asyncio.timeout(self._timeout_s):
                hello = await _peek_hello(conn)
        except NotTls as e:
            log.info("tls refused reason=not-tls error=%s", e)
            return None
        except MalformedHello as e:
            log.info("tls refused reason=malformed-client-hello error=%s", e)
            _send(conn, ALERT_DECODE_ERROR)
            return None
        try:
            context = self._select(hello.server_name)
        except Exception:  # a failed mint must cost one connection, not the listener
            log.exception("tls mint failed sni=%r", hello.server_name)
            _send(conn, ALERT_INTERNAL_ERROR)
            return None
        if context is None:
            log.info("tls refused sni=%r reason=not-intercepted", hello.server_name)
            _send(conn, ALERT_UNRECOGNIZED_NAME)
        return context


async def _peek_hello(conn: socket.socket) -> ClientHello:
    """Wait until the whole ClientHello has arrived, leaving it unread in the socket."""
    loop = asyncio.get_running_loop()
    while True:
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
        data = conn.recv(MAX_HELLO_BYTES, socket.MSG_PEEK)
        if not data:
            raise ConnectionResetError("connection closed before the ClientHello")
        hello = parse_client_hello(data)
        if hello is not None:
            return hello
        if len(data) >= MAX_HELLO_BYTES:
            raise MalformedHello("no complete ClientHello in the first 64 KiB")
        # A partial hello leaves the socket readable: poll instead of spinning.
        await asyncio.sleep(_PARTIAL_HELLO_POLL_S)


def _wake(ready: asyncio.Future[None]) -> None:
    # The wait may have been cancelled (timeout, close) in this same loop iteration,
    # after the selector queued this call: setting its result would raise.
    if not ready.done():
        ready.set_result(None)


def _send(conn: socket.socket, alert: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.send(alert)

"""The HTTPS listener: reads each ClientHello, picks the leaf by SNI, then starts TLS.

Refused names get a real `unrecognized_name` alert (see clienthello.py for why this is
not left to an SNI callback); accepted connections are handed, TLS-wrapped, to the HTTP
protocol factory (aiohttp's server), which knows nothing about certificates.

The front door (accept, admission, the ClientHello wait, the choice of leaf) runs on an
event loop of its own, in its own thread, never on the loop that runs the cache: a crowd
of clients that connect and stall, or ask for many new names under a wildcard, then
costs that thread, not every pull. The TLS handshake and HTTP run on the serving loops
(the caller's loop and `other_loops`, in turn).

Who closes an accepted socket is settled by `_Handoff`: the front door, until a serving
loop starts the TLS handshake on it; from then on asyncio's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

from appliance.config.model import Endpoint
from appliance.kit.listen import ServingLoop, bind
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn
from appliance.tls.admission import Admission, Refused, Slot, counted
from appliance.tls.clienthello import (
    ALERT_DECODE_ERROR,
    ALERT_INTERNAL_ERROR,
    ALERT_UNRECOGNIZED_NAME,
    MAX_HELLO_BYTES,
    RECORD_HEADER_BYTES,
    ClientHello,
    MalformedHello,
    NotTls,
    hello_or_need,
)

log = logging.getLogger(__name__)

ContextSelector = Callable[[str | None], Awaitable[ssl.SSLContext | None]]
_ACCEPT_BACKOFF_S = 0.1
_BELOW_MARK_BACKOFF_S = 0.1
_STOP_TIMEOUT_S = 10.0
WRITE_HIGH_WATER_BYTES = 64 << 10
"""Encrypted bytes a connection may hold before its handler waits (the kernel socket
buffer beyond it keeps a fast client busy)."""
_PEER_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class TlsListener:
    def __init__(
        self,
        select: ContextSelector,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        handshake_timeout_s: float = 10.0,
        max_handshakes: int = 1024,
        other_loops: Sequence[ServingLoop] = (),
        admission: Admission | None = None,
        stop_timeout_s: float = _STOP_TIMEOUT_S,
    ) -> None:
        self._select = select
        self._factory = protocol_factory
        self._other_loops = other_loops
        self._targets: Iterator[ServingLoop] = iter(())
        self._timeout_s = handshake_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._handshakes = asyncio.Semaphore(max_handshakes)
        self._admission = admission or Admission()
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._door: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._accept_errors = LogThrottle(log, interval_s=30.0)
        self._refusals = LogThrottle(log, interval_s=30.0)

    async def start(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Listen on `endpoints`; connections are served on the calling loop (with
        `protocol_factory`) and on `other_loops`, spread round-robin."""
        if self._door is None:
            home: ServingLoop = (asyncio.get_running_loop(), self._factory)
            self._targets = itertools.cycle([home, *self._other_loops])
            self._door = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._door.run_forever, name="https-front-door", daemon=True
            )
            self._thread.start()
        for endpoint in endpoints:
            try:
                sock = bind(endpoint, socket.SOCK_STREAM)
            except OSError as e:
                raise OSError(
                    e.errno, f"cannot listen for HTTPS on {endpoint}: {e.strerror}"
                ) from e
            self._sockets.append(sock)
            await self._on_door(self._open(sock, endpoint))
            log.info("https listening endpoint=%s", endpoint)

    async def stalled(self) -> str | None:
        """None if the front door's loop runs a callback (the health monitor's deadline
        applies: a door stuck in a callback never answers), else why not."""
        door = self._door
        if door is None or door.is_closed() or not door.is_running():
            return "the front door's loop is not running"
        await self._on_door(asyncio.sleep(0))
        return None

    async def close(self) -> None:
        door, thread = self._door, self._thread
        if door is not None and thread is not None:
            await self._stop_door(door, thread)
            self._door = self._thread = None
        for sock in self._sockets:  # after the accept loops stopped watching them
            sock.close()
        self._sockets.clear()

    async def _stop_door(self, door: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        """Cancel the door's tasks and end its thread, within `stop_timeout_s` in all: a
        door stuck in a callback (what `stalled` reports) must not hang shutdown. A
        thread that does not end is a daemon, left to end with the process."""
        deadline = time.monotonic() + self._stop_timeout_s
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await self._on_door(self._stop_tasks())
        except TimeoutError:
            log.warning(
                "https close timed-out waiting=front-door-tasks timeout_s=%g",
                self._stop_timeout_s,
            )
        door.call_soon_threadsafe(door.stop)
        await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning(
                "https close timed-out waiting=front-door-thread timeout_s=%g",
                self._stop_timeout_s,
            )
        else:
            door.close()

    async def _on_door(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._door is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._door))

    async def _open(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self._track(spawn(self._accept(sock), name=f"https-accept {endpoint}"))

    async def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()  # leaves being minted

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and friends: back off, never stop listening
                self._accept_errors.warning("accept", "https accept failed error=%s", e)
                await asyncio.sleep(_ACCEPT_BACKOFF_S)
                continue
            slot = self._admit(str(addr[0]))
            if slot is None:
                conn.close()  # before reading a byte: TLS has cost us nothing yet
                continue
            self._track(spawn(self._serve(conn, slot), name="https-handshake"))

    def _admit(self, client: str) -> Slot | None:
        """A slot for the connection, or None (after saying why) to close it at once."""
        if not self._admission.allowed(client):
            log.debug("https refused reason=not-allowed client=%s", client)
            return None
        slot = self._admission.take(client)
        if isinstance(slot, Refused):  # per address (or /64): the others are unaffected
            self._refusals.warning(
                f"{slot.reason} {slot.counted}",
                "https refused reason=%s client=%s limit=%d",
                slot.reason,
                client,
                slot.limit,
            )
            return None
        if self._handshakes.locked():  # shed load before TLS costs us anything
            slot.release()
            self._refusals.warning(
                "handshakes", "https refused reason=too-many-handshakes client=%s", client
            )
            return None
        return slot

    async def _serve(self, conn: socket.socket, slot: Slot) -> None:
        handoff = _Handoff(conn)
        served = False
        async with self._handshakes:
            try:
                context = await self._choose(conn)
                if context is not None:
                    await self._hand_over(handoff, context, slot)
                    served = True  # the slot is given back when the connection ends
            except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
                log.debug("tls handshake failed error=%s", e)
            finally:  # also when cancelled, or when the serving loop is gone
                handoff.abandon()
                slot.handshake_done()
                if not served:
                    slot.release()

    async def _hand_over(self, handoff: _Handoff, context: ssl.SSLContext, slot: Slot) -> None:
        """Run the TLS handshake on the next serving loop; returns once TLS is up."""
        loop, factory = next(self._targets)
        handshake = handoff.handshake(counted(factory, slot), context, self._timeout_s)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handshake, loop))

    async def _choose(self, conn: socket.socket) -> ssl.SSLContext | None:
        """The leaf context for this connection, or None after telling the client why."""
        try:
            async with asyncio.timeout(self._timeout_s):
                hello = await read_hello(conn)
        except NotTls as e:
            log.info("tls refused reason=not-tls error=%s", e)
            return None
        except MalformedHello as e:
            log.info("tls refused reason=malformed-client-hello error=%s", e)
            _send(conn, ALERT_DECODE_ERROR)
            return None
        try:
            context = await self._select(hello.server_name)
        except Exception:  # a failed mint must cost one connection, not the listener
            log.exception("tls mint failed sni=%r", hello.server_name)
            _send(conn, ALERT_INTERNAL_ERROR)
            return None
        if context is None:
            log.info("tls refused sni=%r reason=not-intercepted", hello.server_name)
            _send(conn, ALERT_UNRECOGNIZED_NAME)
        return context


class _Handoff:
    """Who closes an accepted socket. The front door hands it to a serving loop by
    scheduling `handshake` there; if the door gives up first (cancelled at close, or the
    loop never runs it), the socket is closed by `abandon` rather than left open until
    garbage collection, and `handshake` then does nothing. Once `handshake` has begun,
    the socket is asyncio's: its transport closes it, however the handshake ends."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn: socket.socket | None = conn
        self._lock = threading.Lock()  # the door's thread and a serving loop's

    def abandon(self) -> None:
        """On the door: close the socket unless a serving loop has taken it."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def handshake(
        self, factory: Callable[[], asyncio.Protocol], context: ssl.SSLContext, timeout_s: float
    ) -> None:
        """On the serving loop: TLS on the socket, unless the door gave up on it."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            protocol = factory()  # before the transport exists, the socket is still ours
        except BaseException:
            conn.close()
            raise
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            lambda: protocol, conn, ssl=context, ssl_handshake_timeout=timeout_s
        )
        # asyncio lets a handler put 512 KiB into TLS before it has it wait, and keeps
        # that much encrypted for the connection while the client reads slowly: with
        # many clients, most of regcache's memory (bench --only streams). Set before
        # the handler's task for a first request has run.
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)


async def read_hello(conn: socket.socket) -> ClientHello:
    """Wait until the whole ClientHello has arrived, leaving it unread in the socket.

    Without polling: the hello's own lengths say how many bytes it needs next (a record
    header, then the rest of that record, then the next header if the hello spans more
    records), and SO_RCVLOWAT set to that count makes Linux report the socket readable
    only once that many bytes are queued, or the peer closed or reset. A level-triggered
    wait on the loop then wakes once per record header and record, however the client
    trickles its bytes; a client that sends 9 bytes and stops costs nothing until the
    timeout. (An edge-triggered epoll would also not poll, but wakes per segment and
    needs a poller of its own beside the loop's.) The mark is reset to 1 before TLS
    takes the socket. Nothing is read beyond `MAX_HELLO_BYTES`.
    """
    loop = asyncio.get_running_loop()
    need = RECORD_HEADER_BYTES
    try:
        while True:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
            await _readable(loop, conn)
            try:
                data = conn.recv(MAX_HELLO_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionResetError("connection closed before the ClientHello")
            if len(data) < need:
                await _below_the_mark(conn, len(data), need)
                continue
            found = hello_or_need(data)
            if isinstance(found, ClientHello):
                return found
            if found > MAX_HELLO_BYTES:
                raise MalformedHello("no complete ClientHello in the first 64 KiB")
            need = found
    finally:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    fd = conn.fileno()
    ready = loop.create_future()
    loop.add_reader(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    # The wait may have been cancelled (timeout, close) in this same loop iteration,
    # after the selector queued this call: setting its result would raise.
    if not ready.done():
        ready.set_result(None)


async def _below_the_mark(conn: socket.socket, have: int, need: int) -> None:
    """Woken with fewer bytes than the mark: the peer closed (or reset) after a partial
    hello, or Linux reports readable early under memory pressure. Raise in the first
    case; back off in the second rather than spin."""
    poller = select.poll()
    poller.register(conn, select.POLLIN | select.POLLRDHUP)
    if any(events & _PEER_GONE for _fd, events in poller.poll(0)):
        raise ConnectionResetError(
            f"connection closed after {have} of the ClientHello's first {need} bytes"
        )
    await asyncio.sleep(_BELOW_MARK_BACKOFF_S)


def _send(conn: socket.socket, alert: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.send(alert)

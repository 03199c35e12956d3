"""The DNS responder's sockets: UDP and TCP listeners with bounded intake.

UDP: local answers (intercepted names, refusals, errors) are sent from the datagram
callback itself; only forwards get a task, at most `max_pending_udp` at once (excess is
dropped, as a loaded resolver would). TCP (RFC 7766): at most `max_connections`
connections from clients in `allow_clients` (others are closed at once, before they
take a slot), each closed after `idle_timeout_s` without a query; pipelined queries on a
connection are answered concurrently, up to 16 in flight per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from typing import cast

from appliance.config.model import Endpoint
from appliance.dns.ratelimit import RateLimiter
from appliance.dns.responder import Forward, Responder
from appliance.kit.listen import bind
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn

log = logging.getLogger(__name__)

_PER_CONNECTION_INFLIGHT = 16
_UDP_RCVBUF_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_pending_udp: int
    max_connections: int
    idle_timeout_s: float


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None
        self._pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        client = str(addr[0])
        if not self._server.admit(client) or self._transport is None:
            return
        decision = self._server.responder.decide(data, client, tcp=False)
        if isinstance(decision, Forward):
            if self._pending < self._server.limits.max_pending_udp:
                self._pending += 1
                spawn(self._forward(decision, addr), name="dns-udp-forward")
        elif decision is not None:
            self._transport.sendto(decision, addr)

    async def _forward(self, job: Forward, addr: tuple[str | object, ...]) -> None:
        try:
            reply = await self._server.responder.forward(job)
            if self._transport is not None and not self._transport.is_closing():
                self._transport.sendto(reply, addr)
        finally:
            self._pending -= 1

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp error=%s", exc)


class DnsServer:
    def __init__(
        self, responder: Responder, rate_limiter: RateLimiter, limits: ServerLimits
    ) -> None:
        self.responder = responder
        self.limits = limits
        self._rate_limiter = rate_limiter
        self._connections = 0
        self._udp: list[asyncio.BaseTransport] = []
        self._tcp: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._accept_errors = LogThrottle(log, interval_s=30.0)

    @property
    def listening(self) -> bool:
        return bool(self._udp)

    def admit(self, client: str) -> bool:
        return self._rate_limiter.allow(client)

    async def start(self, endpoints: tuple[Endpoint, ...]) -> None:
        for endpoint in endpoints:
            try:
                await self._listen(endpoint)
            except OSError as e:
                raise OSError(e.errno, f"cannot listen for DNS on {endpoint}: {e.strerror}") from e
            log.info("dns listening endpoint=%s transports=udp,tcp", endpoint)

    async def _listen(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        udp = bind(endpoint, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF_BYTES)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
        self._udp.append(transport)
        tcp = bind(endpoint, socket.SOCK_STREAM)
        self._tcp.append(tcp)
        self._accepting.append(spawn(self._accept(tcp), name=f"dns-tcp-accept {endpoint}"))

    async def close(self) -> None:
        for transport in self._udp:
            transport.close()
        for task in [*self._accepting, *self._conn_tasks]:
            task.cancel()
        await asyncio.gather(*self._accepting, *self._conn_tasks, return_exceptions=True)
        for sock in self._tcp:  # after the accept loops stopped watching them
            sock.close()
        self._udp.clear()
        self._tcp.clear()
        self._accepting.clear()

    async def _accept(self, listener: socket.socket) -> None:
        """TCP intake. A client outside `allow_clients`, or one beyond the slots, is closed
        as accepted, before a transport, stream or task exists for it: an outsider that
        reconnects as fast as it can costs an accept and a close, and can never hold the
        slots allowed clients need."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and friends: back off, never stop listening
                self._accept_errors.warning("accept", "dns tcp accept failed error=%s", e)
                await asyncio.sleep(0.1)
                continue
            client = str(peer[0]) if peer else "?"
            if not self._tcp_allowed(client) or self._connections >= self.limits.max_connections:
                conn.close()
                continue
            self._connections += 1
            task = spawn(self._serve_tcp(conn, client), name="dns-tcp")
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    async def _serve_tcp(self, conn: socket.socket, client: str) -> None:
        """One allowed client's connection (its slot already taken by `_accept`)."""
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            self._connections -= 1
            conn.close()
            return
        inflight = asyncio.Semaphore(_PER_CONNECTION_INFLIGHT)
        answers: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.limits.idle_timeout_s):
                        (size,) = struct.unpack("!H", await reader.readexactly(2))
                        data = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                if not self.admit(client):
                    continue
                await inflight.acquire()
                answer = spawn(self._answer_tcp(data, client, writer, inflight), name="dns-tcp")
                answers.add(answer)
                answer.add_done_callback(answers.discard)
            if answers:
                await asyncio.wait(answers, timeout=self.limits.idle_timeout_s)
        finally:
            self._connections -= 1
            for answer in answers:
                answer.cancel()
            writer.close()

    def _tcp_allowed(self, client: str) -> bool:
        """Whether a TCP peer is in `allow_clients`; a peer without an address is not."""
        try:
            return self.responder.allowed(client)
        except ValueError:
            return False

    async def _answer_tcp(
        self,
        data: bytes,
        client: str,
        writer: asyncio.StreamWriter,
        inflight: asyncio.Semaphore,
    ) -> None:
        try:
            reply = await self.responder.answer(data, client, tcp=True)
            if reply is not None and not writer.is_closing():
                writer.write(struct.pack("!H", len(reply)) + reply)
                async with asyncio.timeout(self.limits.idle_timeout_s):
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
        finally:
            inflight.release()

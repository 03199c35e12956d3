"""Read the SNI host name out of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3).

regcache reads the ClientHello before starting TLS so that a refused name gets a real
`unrecognized_name` alert: asyncio drops the alert OpenSSL produces when an SNI callback
fails the handshake (CPython gh-98078), leaving clients with a bare EOF.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONTENT_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0x0000
NAME_TYPE_HOST = 0x00
RECORD_HEADER_BYTES = 5  # content type, version, length
MAX_HELLO_BYTES = 1 << 16  # far above real ClientHellos (~2 KiB with post-quantum shares)
# Clients send a ClientHello in one record, or a few small ones (max_fragment_length);
# a bound keeps a hello trickled in tiny records from costing a re-parse per record.
MAX_HELLO_RECORDS = 64


class NotTls(ValueError):
    """The bytes are not a TLS handshake (plain HTTP on the HTTPS port, say)."""


class MalformedHello(ValueError):
    """A TLS handshake record whose ClientHello cannot be parsed."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None


def _alert(description: int) -> bytes:
    # A plaintext fatal alert record, valid before any ServerHello (RFC 8446 6).
    return struct.pack("!BHHBB", 0x15, 0x0303, 2, 2, description)


ALERT_UNRECOGNIZED_NAME = _alert(112)
ALERT_DECODE_ERROR = _alert(50)
ALERT_INTERNAL_ERROR = _alert(80)


def hello_or_need(data: bytes) -> ClientHello | int:
    """The ClientHello in `data`, or how many bytes (counted from the start of `data`)
    must have arrived before it can say more: always more than `len(data)`, so a reader
    that waits for that many bytes makes progress with every wait (listener.py)."""
    handshake = bytearray()
    offset = 0
    for _record in range(MAX_HELLO_RECORDS):
        if len(data) - offset < RECORD_HEADER_BYTES:
            return offset + RECORD_HEADER_BYTES
        content_type, _version, length = struct.unpack_from("!BHH", data, offset)
        if content_type != CONTENT_HANDSHAKE:
            if offset == 0:
                raise NotTls(f"first byte {content_type:#04x} is not a TLS handshake record")
            raise MalformedHello("ClientHello interleaved with another record type")
        if length == 0 or length > (1 << 14):
            raise MalformedHello(f"record length {length} out of range")
        end: int = offset + RECORD_HEADER_BYTES + length
        if len(data) < end:
            return end
        handshake += data[offset + RECORD_HEADER_BYTES : end]
        offset = end
        if len(handshake) >= 4:
            msg_type = handshake[0]
            hs_length = int.from_bytes(handshake[1:4], "big")
            if msg_type != HANDSHAKE_CLIENT_HELLO:
                raise MalformedHello(f"handshake type {msg_type} is not ClientHello")
            if hs_length + 4 > MAX_HELLO_BYTES:
                raise MalformedHello(f"ClientHello of {hs_length} bytes is too large")
            if len(handshake) >= hs_length + 4:
                return ClientHello(_server_name(bytes(handshake[4 : 4 + hs_length])))
    raise MalformedHello(f"ClientHello spread over more than {MAX_HELLO_RECORDS} records")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise MalformedHello("ClientHello is shorter than its lengths say")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def vector(self, width: int) -> _Reader:
        return _Reader(self.take(self.number(width)))

    def take_all(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def done(self) -> bool:
        return self.pos == len(self.data)


def _server_name(body: bytes) -> str | None:
    hello = _Reader(body)
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    if hello.done():
        return None  # no extensions at all (SSL 3.0-era clients)
    extensions = hello.vector(2)
    while not extensions.done():
        ext_type = extensions.number(2)
        ext = extensions.vector(2)
        if ext_type != EXT_SERVER_NAME:
            continue
        names = ext.vector(2)
        while not names.done():
            name_type = names.number(1)
            name = names.vector(2).take_all()
            if name_type == NAME_TYPE_HOST:
                try:
                    return name.decode("ascii")
                except UnicodeDecodeError as e:
                    raise MalformedHello("server name is not ASCII") from e
        return None
    return None

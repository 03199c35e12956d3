"""Admission to the HTTPS port: the allow-list by every spelling of an address, the
per-client count from many threads, and slots given back exactly once."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import pytest

from appliance.tls.admission import Admission, counted


def test_the_allow_list_matches_addresses_however_the_socket_spells_them() -> None:
    admission = Admission((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")))
    assert admission.allowed("10.1.2.3") and admission.allowed("::ffff:10.1.2.3")
    assert admission.allowed("fd00::1") and admission.allowed("fd00::1%eth0")
    assert not admission.allowed("192.168.1.1") and not admission.allowed("::ffff:192.168.1.1")
    assert not admission.allowed("fe80::1%eth0") and not admission.allowed("::1")
    everyone = Admission()
    assert everyone.allowed("203.0.113.9") and everyone.allowed("2001:db8::1")


def test_each_client_holds_at_most_its_share_and_a_slot_is_given_back_once() -> None:
    admission = Admission(max_per_client=2)
    first, second = admission.take("10.0.0.1"), admission.take("10.0.0.1")
    assert first is not None and second is not None
    assert admission.take("10.0.0.1") is None
    assert admission.take("10.0.0.2") is not None  # another client is not affected
    first.release()
    first.release()  # a connection ending on two loops at once counts once
    assert admission.held("10.0.0.1") == 1
    assert admission.take("10.0.0.1") is not None and admission.take("10.0.0.1") is None


def test_counts_stay_exact_when_many_threads_take_and_give_back() -> None:
    admission = Admission(max_per_client=10_000)

    def churn() -> None:
        for _ in range(2000):
            slot = admission.take("10.0.0.1")
            assert slot is not None
            slot.release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert admission.held("10.0.0.1") == 0


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.events.append(data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        raise RuntimeError("the HTTP protocol failed while closing")


async def test_a_counted_connection_passes_everything_on_and_gives_its_slot_back() -> None:
    """Over a real socket pair: the wrapped protocol sees what the plain one would, and
    the slot comes back when the connection ends, even if the protocol raises then."""
    admission = Admission(max_per_client=1)
    slot = admission.take("10.0.0.1")
    assert slot is not None
    inner = Recorder()
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(counted(lambda: inner, slot), ours)
    theirs.sendall(b"GET /")
    theirs.shutdown(1)
    for _ in range(200):
        if "eof" in inner.events:
            break
        await asyncio.sleep(0.01)
    assert admission.held("10.0.0.1") == 1
    loop.set_exception_handler(lambda _loop, _context: None)
    transport.close()
    await asyncio.sleep(0.05)
    theirs.close()
    assert inner.events == ["made", b"GET /", "eof", ("lost", None)]
    assert admission.held("10.0.0.1") == 0


def test_only_plain_protocols_are_counted() -> None:
    slot = Admission().take("10.0.0.1")
    assert slot is not None
    with pytest.raises(TypeError, match=r"not an asyncio\.Protocol"):
        counted(asyncio.BufferedProtocol, slot)()

"""Admission to the HTTPS port: the allow-list by every spelling of an address, the
per-client counts (open and pending, IPv6 pending also per /64) from many threads, and
slots given back exactly once."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import pytest

from appliance.tls.admission import Admission, Refused, Slot, counted, prefix_of


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
    assert isinstance(first, Slot) and isinstance(second, Slot)
    assert admission.take("10.0.0.1") == Refused("too-many-connections", 2, "10.0.0.1")
    assert isinstance(admission.take("10.0.0.2"), Slot)  # another client is not affected
    first.release()
    first.release()  # a connection ending on two loops at once counts once
    first.handshake_done()  # nor does its handshake end after it did
    assert admission.held("10.0.0.1") == 1
    assert isinstance(admission.take("10.0.0.1"), Slot)
    assert isinstance(admission.take("10.0.0.1"), Refused)


def slots(admission: Admission, *clients: str) -> list[Slot]:
    taken = [admission.take(client) for client in clients]
    assert all(isinstance(slot, Slot) for slot in taken), taken
    return [slot for slot in taken if isinstance(slot, Slot)]


def test_connections_before_their_handshake_ends_are_capped_lower_and_apart() -> None:
    """The pending cap counts a connection from accept until its handshake is over;
    open connections count only against the (higher) open cap."""
    admission = Admission(max_per_client=4, max_pending_per_client=2)
    first, _second = slots(admission, "10.0.0.1", "10.0.0.1")
    assert admission.take("10.0.0.1") == Refused("too-many-pending", 2, "10.0.0.1")
    first.handshake_done()
    first.handshake_done()  # once only
    slots(admission, "10.0.0.1")
    assert admission.take("10.0.0.1") == Refused("too-many-pending", 2, "10.0.0.1")
    first.release()  # an open connection ends: its place, not a pending one
    assert admission.take("10.0.0.1") == Refused("too-many-pending", 2, "10.0.0.1")
    # a connection that ends before its handshake does gives back both
    third, fourth = slots(admission, "10.0.0.2", "10.0.0.2")
    third.release()
    slots(admission, "10.0.0.2")
    assert admission.held("10.0.0.2") == 2
    fourth.handshake_done()
    fourth.release()
    assert admission.held("10.0.0.2") == 1


def test_ipv6_pending_connections_are_also_capped_per_64() -> None:
    """One host may use any address of its /64: per address alone it could fill the
    listener's handshake limit. IPv4 (also spelled IPv4-mapped) is never grouped."""
    admission = Admission(max_pending_per_client=2, max_pending_per_prefix=3)
    one = slots(admission, "2001:db8::1", "2001:db8::1")[0]
    assert admission.take("2001:db8::1") == Refused("too-many-pending", 2, "2001:db8::1")
    slots(admission, "2001:db8::2")
    refused = Refused("too-many-pending-in-prefix", 3, "2001:db8::/64")
    assert admission.take("2001:db8::3") == refused
    assert admission.take("2001:db8::ffff:ffff:ffff:ffff") == refused
    slots(admission, "2001:db8:0:1::1", "2001:db8:1::1")  # the next /64s are not
    one.handshake_done()
    slots(admission, "2001:db8::3")
    # IPv4, however spelled, per address only
    slots(admission, *(f"::ffff:10.0.0.{i}" for i in range(8)), *(f"10.0.1.{i}" for i in range(8)))
    # link-local: a /64 per link (zone)
    slots(admission, "fe80::1%eth0", "fe80::2%eth0", "fe80::3%eth0", "fe80::4%eth1")
    assert isinstance(admission.take("fe80::5%eth0"), Refused)
    assert prefix_of("fe80::1%eth0") == "fe80::/64%eth0" and prefix_of("::ffff:10.0.0.1") is None
    assert prefix_of("2001:db8:1:2:3::4") == "2001:db8:1:2::/64" and prefix_of("10.0.0.1") is None


def test_counts_stay_exact_when_many_threads_take_and_give_back() -> None:
    admission = Admission(max_per_client=10_000)

    def churn() -> None:
        for i in range(2000):
            slot = admission.take("2001:db8::1")
            assert isinstance(slot, Slot)
            if i % 2:
                slot.handshake_done()
            slot.release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert admission.held("2001:db8::1") == 0
    assert len(slots(admission, *["2001:db8::1"] * 32)) == 32  # no pending place lost


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
    assert isinstance(slot, Slot)
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
    assert isinstance(slot, Slot)
    with pytest.raises(TypeError, match=r"not an asyncio\.Protocol"):
        counted(asyncio.BufferedProtocol, slot)()

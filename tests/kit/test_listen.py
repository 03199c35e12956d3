"""Sockets bound to configured endpoints, on real loopback sockets."""

from __future__ import annotations

import os
import socket

import pytest

from appliance.config.values import Endpoint
from appliance.kit.listen import bind
from tests.harness import free_port


def test_a_tcp_endpoint_is_bound_listening_and_non_blocking() -> None:
    port = free_port()
    with bind(Endpoint.parse(f"127.0.0.1:{port}"), socket.SOCK_STREAM) as sock:
        assert sock.getsockname() == ("127.0.0.1", port)
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_udp_endpoint_receives_datagrams() -> None:
    port = free_port()
    with bind(Endpoint.parse(f"127.0.0.1:{port}"), socket.SOCK_DGRAM) as sock:
        assert not sock.getblocking()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"query", ("127.0.0.1", port))
        sock.settimeout(5)
        assert sock.recv(100) == b"query"


def test_an_ipv6_socket_is_ipv6_only_so_both_families_can_share_a_port() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    port = free_port()
    try:
        v6 = bind(Endpoint.parse(f"[::]:{port}"), socket.SOCK_STREAM)
    except OSError as e:
        pytest.skip(f"cannot bind IPv6: {e}")
    with v6, bind(Endpoint.parse(f"0.0.0.0:{port}"), socket.SOCK_STREAM) as v4:
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert v4.getsockname() == ("0.0.0.0", port)


def test_a_busy_endpoint_is_an_error_and_leaves_no_socket_open() -> None:
    endpoint = Endpoint.parse(f"127.0.0.1:{free_port()}")
    with bind(endpoint, socket.SOCK_STREAM):
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="in use"):
            bind(endpoint, socket.SOCK_STREAM)
        assert len(os.listdir("/proc/self/fd")) == before

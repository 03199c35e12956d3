"""Leaves minted on SNI: once per name, again before expiry, bounded, never for a
malformed name, never outliving the CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.config.hostnames import HostSet
from appliance.tls import leaves as leaves_module
from appliance.tls.ca import create_ca
from appliance.tls.leaves import LeafStore, mint_leaf
from tests.tls.cas import NOW, new_ca


async def test_leaf_store_mints_once_per_name_and_again_before_expiry(tmp_path: Path) -> None:
    now = [NOW.timestamp()]
    store = LeafStore(
        new_ca(tmp_path),
        HostSet.of(["ghcr.io", "*.docker.io"]),
        dt.timedelta(days=30),
        clock=lambda: now[0],
    )
    first = await store.context("GHCR.io.")
    assert first is not None and await store.context("ghcr.io") is first
    assert await store.context("example.com") is None and await store.context("::1") is None
    assert await store.context(None) is None and await store.context("docker.io") is None
    assert store.minted_names == {"ghcr.io"} and store.mint_count == 1
    now[0] += dt.timedelta(days=19).total_seconds()  # < 2/3 of 30 days: still fresh
    assert await store.context("ghcr.io") is first
    now[0] += dt.timedelta(days=2).total_seconds()  # past 2/3: re-minted
    assert await store.context("ghcr.io") is not first and store.mint_count == 2


async def test_leaf_store_is_bounded_for_wildcard_names(tmp_path: Path) -> None:
    store = LeafStore(
        new_ca(tmp_path), HostSet.of(["*.docker.io"]), dt.timedelta(days=30), max_entries=2
    )
    a = await store.context("a.docker.io")
    await store.context("b.docker.io")
    assert await store.context("a.docker.io") is a  # a is now the most recently used
    await store.context("c.docker.io")
    assert store.minted_names == {"a.docker.io", "c.docker.io"}


async def test_a_new_name_asked_for_at_once_is_minted_once_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener's path: signing happens off the asking loop's thread, and callers
    that ask for the same new name meanwhile share it; a failed mint is retried."""
    store = LeafStore(new_ca(tmp_path), HostSet.of(["*.docker.io"]), dt.timedelta(days=30))
    threads: list[str] = []
    fail = [True]
    real = leaves_module.mint_leaf

    def recording(*args: Any) -> x509.Certificate:
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # long enough for every caller below to be waiting
        if fail[0]:
            raise RuntimeError("signing failed")
        return real(*args)

    monkeypatch.setattr(leaves_module, "mint_leaf", recording)
    results = await asyncio.gather(
        *(store.context("x.docker.io") for _ in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and store.mint_count == 0
    fail[0] = False
    threads.clear()
    contexts = await asyncio.gather(*(store.context("X.docker.io") for _ in range(5)))
    assert len({id(c) for c in contexts}) == 1 and contexts[0] is not None
    assert store.mint_count == 1 and len(threads) == 1
    assert threads[0] != threading.current_thread().name
    assert await store.context("x.docker.io") is contexts[0] and store.mint_count == 1
    assert await store.context("docker.io") is None and await store.context(None) is None


@pytest.mark.parametrize(
    "sni", ["a b.pkg.dev", "a/b.pkg.dev", "-a.pkg.dev", "a..pkg.dev", "a\x00.pkg.dev",
            "x" * 64 + ".pkg.dev", ".pkg.dev", "a.pkg.dev\n"],
)  # fmt: skip
async def test_no_leaf_for_a_malformed_name_under_a_wildcard(tmp_path: Path, sni: str) -> None:
    ca = create_ca(tmp_path, permitted_domains=("pkg.dev",), lifetime=dt.timedelta(days=5), now=NOW)
    store = LeafStore(ca, HostSet.of(["*.pkg.dev"]), dt.timedelta(days=30))
    assert await store.context(sni) is None and store.mint_count == 0
    assert await store.context("us-docker.pkg.dev") is not None  # a real one still works


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    ca = create_ca(
        tmp_path, permitted_domains=("docker.io",), lifetime=dt.timedelta(days=5), now=NOW
    )
    leaf = mint_leaf(
        ca,
        "registry-1.docker.io",
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        dt.timedelta(days=30),
        NOW,
    )
    assert leaf.not_valid_after_utc == ca.cert.not_valid_after_utc

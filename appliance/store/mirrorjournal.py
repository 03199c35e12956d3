"""The mirror's decisions kept outside the index too: what each mirrored tag and backup
ref serves (pins included), every move, the entries `regcache mirror add` added, and the
referrers kept. A corrupt index is moved aside and rebuilt from the blob files
(`reconcile.open_index`), which know nothing of tags: without this copy a rebuild would
forget every pin and rollback, and let eviction take what the mirror keeps.

`save` writes `mirror.json` (temp file, fsync, rename, directory fsync) after the
mirror's rows change; `restore` puts its rows back into an index that has none. The
local registry's rows (`save_local`, `local.json`) are kept the same way: nowhere else
could they be fetched again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from appliance.kit.durable import fsync_dir
from appliance.kit.logfields import fields
from appliance.store.index import SqliteIndex

log = logging.getLogger(__name__)

JOURNAL_NAME = "mirror.json"
LOCAL_JOURNAL_NAME = "local.json"
_TABLES = ("mirror_tags", "mirror_history", "mirror_added", "mirror_referrers")
_LOCAL_TABLES = ("local_blobs", "local_manifests", "local_tags")


async def save(root: Path, index: SqliteIndex) -> None:
    await _save(root / JOURNAL_NAME, _TABLES, index)


async def save_local(root: Path, index: SqliteIndex) -> None:
    """The local registry's rows likewise: it is the only copy of what was pushed there."""
    await _save(root / LOCAL_JOURNAL_NAME, _LOCAL_TABLES, index)


async def _save(path: Path, tables: tuple[str, ...], index: SqliteIndex) -> None:
    rows = await index.mirror_rows(tables)
    data = json.dumps({"version": 1, "tables": rows}, separators=(",", ":")).encode()
    await asyncio.to_thread(_write, path, data)


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the CLI and the service alike
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(path.parent)


async def restore(root: Path, index: SqliteIndex) -> int:
    """The journals' rows, into an index whose mirror (local registry) has none; rows
    restored."""
    restored = 0
    if not await index.mirrored_tags():
        restored += await _restore(root / JOURNAL_NAME, _TABLES, index)
    if not await index.local_repositories():
        restored += await _restore(root / LOCAL_JOURNAL_NAME, _LOCAL_TABLES, index)
    return restored


async def _restore(path: Path, names: tuple[str, ...], index: SqliteIndex) -> int:
    if not await asyncio.to_thread(path.exists):
        return 0
    try:
        data: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_bytes))
        tables = {t: [tuple(r) for r in data["tables"][t]] for t in names}
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Moved aside, not left to be overwritten by the next save of an empty index.
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.rename, aside)
        log.error("store journal-unreadable %s", fields(path=path, error=e, kept_as=aside))
        return 0
    restored = await index.restore_mirror_rows(tables)
    log.warning("store restored-from-journal %s", fields(path=path, rows=restored))
    return restored

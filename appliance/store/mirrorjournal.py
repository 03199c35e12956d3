"""The mirror's decisions kept outside the index too: what each mirrored tag and backup
ref serves (pins included), every move, the entries `regcache mirror add` added, and the
referrers kept. A corrupt index is moved aside and rebuilt from the blob files
(`reconcile.open_index`), which know nothing of tags: without this copy a rebuild would
forget every pin and rollback, and let eviction take what the mirror keeps.

`save` writes `mirror.json` (temp file, fsync, rename, directory fsync) after the
mirror's rows change; `restore` puts its rows back into an index that has none."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from appliance.kit.durable import fsync_dir
from appliance.kit.logfields import fields
from appliance.store.index import SqliteIndex

log = logging.getLogger(__name__)

JOURNAL_NAME = "mirror.json"
_TABLES = ("mirror_tags", "mirror_history", "mirror_added", "mirror_referrers")


async def save(root: Path, index: SqliteIndex) -> None:
    rows = await index.mirror_rows(_TABLES)
    data = json.dumps({"version": 1, "tables": rows}, separators=(",", ":")).encode()
    await asyncio.to_thread(_write, root / JOURNAL_NAME, data)


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
    """The journal's rows, into an index whose mirror has no tags; rows restored."""
    path = root / JOURNAL_NAME
    if not path.exists() or await index.mirrored_tags():
        return 0
    try:
        data: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_bytes))
        tables = {t: [tuple(r) for r in data["tables"][t]] for t in _TABLES}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("mirror journal-unreadable %s", fields(path=path, error=e))
        return 0
    restored = await index.restore_mirror_rows(tables)
    log.warning(
        "mirror restored-from-journal %s",
        fields(path=path, tags=len(tables["mirror_tags"]), rows=restored),
    )
    return restored

"""Content-addressed blob files: `blobs/<algorithm>/<2 hex>/<hex>`, written atomically.

A fill writes to a temp file under `tmp/` (same filesystem) while the digest is computed;
only a verified file is fsynced and renamed into place, then its directory fsynced. So a
file under `blobs/` always hashes to its name, across crashes and power loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cache.ports import TempFile
from appliance.kit.durable import fsync_dir
from appliance.kit.tasks import to_thread_to_end
from appliance.oci.digest import Digest, DigestError


@dataclass(slots=True)
class TempBlob:
    """A fill in progress: an open temp file and how much of it is written."""

    path: Path
    fd: int
    written: int = 0
    closed: bool = False
    _closing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.written += len(chunk)

    def seal(self) -> None:
        """fsync and close a file whose bytes are all written and checked: it waits for
        its commit without holding a descriptor (an import stages thousands)."""
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        """Close the file, once: the moment it is closed its number may be handed to
        another open (another fill's file, a client's socket), which a second close would
        close instead. A commit in a thread and a cancelled fill may both get here."""
        with self._closing:
            if self.closed:
                return
            self.closed = True
        os.close(self.fd)


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self.quarantine = root / "quarantine"
        self._placing = threading.Lock()
        """Held to rename a file into place and to remove one: see `watch_commits`."""
        self._watches: list[set[str]] = []

    def prepare(self) -> int:
        """Create the folders and remove temp files of fills a previous run left behind
        (at start no fill is in flight); returns how many were removed."""
        for folder in (self._blobs, self._tmp):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stale = list(self._tmp.glob("fill-*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def keep_reserve(self, size: int) -> bool:
        """Hold `size` bytes in a reserve file (ballast) for when the disk fills: freeing
        it lets SQLite commit the eviction that makes real room. False if no space."""
        path = self.root / "reserve"
        try:
            if path.stat().st_size >= size:
                return True
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError:
            path.unlink(missing_ok=True)
            return False
        return True

    def release_reserve(self) -> bool:
        """Free the reserve; False if there was none."""
        try:
            (self.root / "reserve").unlink()
        except FileNotFoundError:
            return False
        return True

    def check_writable(self) -> str | None:
        """None if a file can be created, written and removed where fills write."""
        probe = self._tmp / "health-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as e:
            return f"cannot write in {self._tmp}: {e.strerror or e}"
        return None

    def path_for(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def size_of(self, digest: Digest) -> int | None:
        try:
            return self.path_for(digest).stat().st_size
        except FileNotFoundError:
            return None

    def create_temp(self) -> TempBlob:
        path = self._tmp / f"fill-{secrets.token_hex(8)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return TempBlob(path, fd)

    async def commit(self, temp: TempFile, digest: Digest) -> Path:
        """fsync, rename into place, fsync the directory; the caller verified the digest."""
        assert isinstance(temp, TempBlob)
        # Cancelled (a fill at shutdown), it still waits: the fill then discards the
        # file, which must not be closed under the fsync.
        return await to_thread_to_end(self._commit, temp, digest)

    def _commit(self, temp: TempBlob, digest: Digest) -> Path:
        """On failure (EIO, ENOSPC…) the temp file is closed and gone, and nothing is
        under `blobs/` that was not there before; `discard` after it is harmless."""
        final = self.path_for(digest)
        try:
            try:
                if not temp.closed:  # a sealed one was fsynced then
                    os.fsync(temp.fd)
            finally:
                temp.close()
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self._placing:
                os.replace(temp.path, final)
                for seen in self._watches:
                    seen.add(str(digest))
        except BaseException:
            with contextlib.suppress(OSError):  # the error that matters is the one raised
                temp.path.unlink(missing_ok=True)
            raise
        # A failure from here on leaves a file that hashes to its name, unindexed:
        # reconciliation indexes it at the next start.
        fsync_dir(final.parent)
        return final

    @contextlib.contextmanager
    def watch_commits(self) -> Iterator[set[str]]:
        """The digests committed from now until the block ends. Eviction deletes rows,
        then files: a fill may commit a digest again in between (its client missed the
        deleted row), and its file must stay. So eviction watches from before it reads
        the index, and `remove(…, keep=watched)` skips those, under the lock the rename
        takes (a commit is either seen or its file is not yet there)."""
        seen: set[str] = set()
        with self._placing:
            self._watches.append(seen)
        try:
            yield seen
        finally:
            with self._placing:
                self._watches.remove(seen)

    def remove(self, digests: list[str], keep: set[str] | None = None) -> None:
        """Unlink blob files (their rows are gone), except those in `keep` (see
        `watch_commits`); missing ones are fine."""
        folders: set[Path] = set()
        for text in digests:
            path = self.path_for(Digest.parse(text))
            with self._placing:
                if keep is not None and text in keep:
                    continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
            folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)

    def hashes_to_name(self, path: Path, digest: Digest) -> bool:
        """Whether the file's content hashes to `digest` (read in 1 MiB chunks)."""
        with path.open("rb", buffering=0) as f:
            return hashlib.file_digest(f, digest.algorithm).hexdigest() == digest.hex

    def walk(self) -> Iterator[tuple[Path, Digest | None]]:
        """Every file under `blobs/`, with the digest its place names (None: not a digest
        path, e.g. a stray file). One that cannot be stat'ed (EIO) is yielded all the same:
        the caller's own stat meets the error for that one file, and the walk goes on."""
        for path in sorted(self._blobs.rglob("*")):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    continue
            try:
                digest = Digest.parse(f"{path.parent.parent.name}:{path.name}")
            except DigestError:
                digest = None
            if digest is not None and self.path_for(digest) != path:
                digest = None
            yield path, digest

    def move_to_quarantine(self, path: Path, why: str) -> Path:
        """Keep a bad file for inspection, out of the blob tree (it is never served). Its
        note (`.why`) is written first: if that fails (ENOSPC, EIO) the file is where it
        was, for the next reconciliation to try again, not moved without its reason."""
        self.quarantine.mkdir(mode=0o700, exist_ok=True)
        target = self.quarantine / f"{path.name}.{secrets.token_hex(4)}"
        note = target.parent / f"{target.name}.why"
        try:
            note.write_text(why + "\n", encoding="utf-8")
            os.replace(path, target)
        except BaseException:
            with contextlib.suppress(OSError):  # the error that matters is the one raised
                note.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        fsync_dir(self.quarantine)
        return target

    def discard(self, temp: TempFile) -> None:
        """Close and remove a temp file; safe after a failed commit (already done)."""
        assert isinstance(temp, TempBlob)
        temp.close()
        temp.path.unlink(missing_ok=True)

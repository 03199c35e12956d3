"""OCI image layouts (image-spec `image-layout.md`) as a directory or a tar stream: what
`regcache export` writes and `regcache import` reads.

Everything streams in 1 MiB pieces, so memory stays flat whatever a bundle holds. A tar
is written and read in stream mode (`w|`, `r|`): it may be a pipe (`--out -`, `import -`).
A tar written to a file goes to a temp file beside it, renamed when whole; a directory is
written in place and removed again if the export fails. When reading, only regular files
count: `oci-layout`, `index.json`, `regcache-bundle.json` and `blobs/<alg>/<hex>`; any
other member (a link, a device, `../x`) is passed over, as nothing is ever extracted by
its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from appliance.oci.digest import Digest, DigestError

LAYOUT_FILE, INDEX_FILE, BUNDLE_FILE = "oci-layout", "index.json", "regcache-bundle.json"
LAYOUT = b'{"imageLayoutVersion": "1.0.0"}'
CHUNK = 1 << 20
SMALL_MAX = 16 << 20
"""The most a layout's JSON files may take (an index.json of many thousand images)."""


class Progress(Protocol):
    """Told of each piece's length as bytes go by, and of each blob done."""

    def __call__(self, n: int) -> None: ...
    def blob(self) -> None: ...


class LayoutError(ValueError):
    """Not a usable layout, or a blob whose bytes are not its name: says which."""


def blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


class Writer:
    """A layout written to a directory, a tar file, or a tar stream (`target` a binary
    file object with a descriptor). Use as a context manager: an exception leaves no
    partial output behind (a stream excepted: what was sent is sent).

    A tar is written as tarfile would write it (headers from `TarInfo.tobuf`, PAX), but
    each blob's bytes go from the store's file to the output with `sendfile`: never
    through Python's buffers."""

    def __init__(self, target: Path | BinaryIO, *, as_tar: bool) -> None:
        self._dir: Path | None = None
        self._final: Path | None = None
        self._file: BinaryIO | None = None
        self._fd: int | None = None
        self._written = 0
        if not as_tar:
            assert isinstance(target, Path)
            if target.exists() and any(target.iterdir()):
                raise LayoutError(f"{target} is not empty")
            target.mkdir(parents=True, exist_ok=True)
            self._dir = target
            return
        if isinstance(target, Path):
            self._final = target
            temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
            self._file = temp.open("xb")
            self._fd = self._file.fileno()
        else:
            target.flush()
            self._fd = target.fileno()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self._close()
        else:
            self._abort()

    def file(self, name: str, data: bytes) -> None:
        if self._fd is not None:
            self._header(name, len(data))
            self._write(self._fd, data)
            self._pad(len(data))
            return
        assert self._dir is not None
        (self._dir / name).write_bytes(data)

    def blob(self, digest: Digest, size: int, source: Path, progress: Progress | None) -> None:
        """The store's file for `digest`, copied as it is (its size checked)."""
        with source.open("rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != size:
                raise LayoutError(f"{digest}: the store's file is not {size} bytes")
            name = blob_name(digest)
            if self._fd is not None:
                self._header(name, size)
                _send(f.fileno(), self._fd, size, digest, progress)
                self._written += size
                self._pad(size)
            else:
                assert self._dir is not None
                path = self._dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("xb") as out:
                    _send(f.fileno(), out.fileno(), size, digest, progress)
        if progress is not None:
            progress.blob()

    def _header(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        assert self._fd is not None
        self._write(self._fd, info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        assert self._fd is not None
        self._write(self._fd, b"\0" * (-size % tarfile.BLOCKSIZE))

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self._written += len(data)

    def _close(self) -> None:
        if self._fd is not None:  # the end of the archive: two zero blocks, a whole record
            end = 2 * tarfile.BLOCKSIZE
            end += -(self._written + end) % tarfile.RECORDSIZE
            self._write(self._fd, b"\0" * end)
        if self._file is not None and self._final is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._file.name, self._final)

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _send(source: int, out: int, size: int, digest: Digest, progress: Progress | None) -> None:
    """`size` bytes of `source` to `out`, kernel to kernel, 8 MiB a call."""
    offset = 0
    while offset < size:
        n = os.sendfile(out, source, offset, min(size - offset, 8 * CHUNK))
        if n == 0:
            raise LayoutError(f"{digest}: the store's file ended at {offset} of {size} bytes")
        offset += n
        if progress is not None:
            progress(n)


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file of a layout: its name, length and, for a blob, the digest it names."""

    name: str
    size: int
    digest: Digest | None = None


def entries(source: Path | BinaryIO) -> Iterator[tuple[Entry, BinaryIO]]:
    """The layout's files in order, each with a stream of its bytes (read it before the
    next: a tar is read once, front to back). A directory gives its JSON files first."""
    if isinstance(source, Path) and source.is_dir():
        yield from _directory(source)
        return
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        try:  # a file is read in place ("r:"); a pipe through tarfile's stream buffer
            if isinstance(source, Path):
                tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r:", bufsize=CHUNK))
            else:
                tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK))
            for member in tar:
                entry = _entry(member.name, member.size) if member.isreg() else None
                data = tar.extractfile(member) if entry is not None else None
                if entry is not None and data is not None:
                    yield entry, data  # type: ignore[misc]
        except tarfile.TarError as e:
            raise LayoutError(f"not a readable tar: {e}") from e


def _directory(root: Path) -> Iterator[tuple[Entry, BinaryIO]]:
    names = [n for n in (LAYOUT_FILE, BUNDLE_FILE, INDEX_FILE) if (root / n).is_file()]
    blobs = root / "blobs"
    for folder in sorted(blobs.iterdir()) if blobs.is_dir() else ():
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            names.append(f"blobs/{folder.name}/{path.name}")
    for name in names:
        path = root / name
        if path.is_symlink() or not path.is_file():
            continue  # a link could name anything on this machine
        entry = _entry(name, path.stat().st_size)
        if entry is not None:
            with path.open("rb") as f:
                yield entry, f


def _entry(name: str, size: int) -> Entry | None:
    name = name.removeprefix("./")
    if name in (LAYOUT_FILE, INDEX_FILE, BUNDLE_FILE):
        return Entry(name, size)
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    try:
        return Entry(name, size, Digest.parse(f"{parts[1]}:{parts[2]}"))
    except DigestError:
        return None


def read_small(entry: Entry, data: BinaryIO) -> bytes:
    if entry.size > SMALL_MAX:
        raise LayoutError(f"{entry.name} is {entry.size} bytes: more than a layout's JSON takes")
    body = data.read(entry.size + 1)
    if len(body) != entry.size:
        raise LayoutError(f"{entry.name} is cut short")
    return body


def copy_verified(
    entry: Entry, data: BinaryIO, write: Callable[[bytes], None], progress: Progress | None
) -> None:
    """A blob's bytes to `write`, hashed on the way: LayoutError naming the digest if they
    are not it (or not as long as the archive said)."""
    assert entry.digest is not None
    hasher, left = hashlib.new(entry.digest.algorithm), entry.size
    while left > 0:
        try:
            piece = data.read(min(CHUNK, left))
        except (OSError, tarfile.TarError) as e:  # a tar cut short, a read error
            raise LayoutError(f"{entry.digest}: could not be read whole: {e}") from e
        if not piece:
            raise LayoutError(f"{entry.digest}: cut short, {left} of {entry.size} bytes missing")
        hasher.update(piece)
        write(piece)
        left -= len(piece)
        if progress is not None:
            progress(len(piece))
    if hasher.hexdigest() != entry.digest.hex:
        actual = Digest(entry.digest.algorithm, hasher.hexdigest())
        raise LayoutError(f"{entry.digest}: its bytes hash to {actual}")
    if progress is not None:
        progress.blob()


def held_blobs(source: Path) -> set[Digest]:
    """The digests a bundle holds (a tar's headers are read, its data skipped)."""
    if source.is_dir():
        return {e.digest for e, _ in _directory(source) if e.digest is not None}
    try:
        with tarfile.open(source, mode="r:") as tar:
            found = (_entry(m.name, m.size) for m in tar.getmembers() if m.isreg())
            return {e.digest for e in found if e is not None and e.digest is not None}
    except (OSError, tarfile.TarError) as e:
        raise LayoutError(f"{source}: not a readable bundle: {e}") from e

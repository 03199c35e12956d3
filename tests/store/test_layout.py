"""OCI image layouts as directories and tar streams: written and read back streaming,
a blob's bytes checked against its name, members that are not layout files passed over."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.store import layout
from appliance.store.layout import LayoutError


def write_bundle(out: Path, blobs: dict[Digest, bytes], *, as_tar: bool) -> None:
    sources = out.parent / "sources"
    sources.mkdir(exist_ok=True)
    with layout.Writer(out, as_tar=as_tar) as w:
        w.file(layout.LAYOUT_FILE, layout.LAYOUT)
        w.file(layout.INDEX_FILE, b"{}")
        for digest, data in blobs.items():
            (sources / digest.hex).write_bytes(data)
            w.blob(digest, len(data), sources / digest.hex, None)


@pytest.mark.parametrize("as_tar", [True, False])
def test_what_is_written_is_read_back_in_order_with_each_blob_checked(
    tmp_path: Path, as_tar: bool
) -> None:
    blobs = {Digest.of(d): d for d in (b"one", b"two" * 100_000)}
    out = tmp_path / ("b.tar" if as_tar else "b")
    write_bundle(out, blobs, as_tar=as_tar)
    seen: dict[str, bytes] = {}
    for entry, data in layout.entries(out):
        if entry.digest is None:
            seen[entry.name] = layout.read_small(entry, data)
        else:
            chunks: list[bytes] = []
            layout.copy_verified(entry, data, chunks.append, None)
            seen[entry.name] = b"".join(chunks)
    assert seen == {"oci-layout": layout.LAYOUT, "index.json": b"{}",
                    **{layout.blob_name(d): b for d, b in blobs.items()}}  # fmt: skip
    assert layout.held_blobs(out) == set(blobs)


def test_a_tar_stream_is_read_from_a_pipe_like_object(tmp_path: Path) -> None:
    blobs = {Digest.of(b"piped"): b"piped"}
    write_bundle(tmp_path / "b.tar", blobs, as_tar=True)
    stream = io.BufferedReader(io.BytesIO((tmp_path / "b.tar").read_bytes()))  # type: ignore[arg-type]
    names = [e.name for e, _ in layout.entries(stream)]
    assert names == ["oci-layout", "index.json", layout.blob_name(Digest.of(b"piped"))]


def test_a_failed_export_leaves_no_partial_file_or_directory(tmp_path: Path) -> None:
    for out, as_tar in ((tmp_path / "x.tar", True), (tmp_path / "x", False)):
        with pytest.raises(LayoutError), layout.Writer(out, as_tar=as_tar) as w:
            w.file(layout.LAYOUT_FILE, layout.LAYOUT)
            (tmp_path / "short").write_bytes(b"abc")
            w.blob(Digest.of(b"abcd"), 4, tmp_path / "short", None)  # the store's file is short
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short"]


def test_bytes_that_are_not_the_blobs_name_are_refused_naming_both(tmp_path: Path) -> None:
    digest = Digest.of(b"right")
    entry = layout.Entry(layout.blob_name(digest), 5, digest)
    with pytest.raises(LayoutError, match=f"{digest}: its bytes hash to {Digest.of(b'wrong')}"):
        layout.copy_verified(entry, io.BytesIO(b"wrong"), lambda _: None, None)
    with pytest.raises(LayoutError, match="cut short"):
        layout.copy_verified(entry, io.BytesIO(b"rig"), lambda _: None, None)


async def test_members_that_are_not_layout_files_are_passed_over(tmp_path: Path) -> None:
    out = tmp_path / "odd.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in (("oci-layout", layout.LAYOUT), ("../../etc/passwd", b"x"),
                           ("blobs/sha256/zz", b"y"), ("index.json", b"{}")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    assert [e.name for e, _ in layout.entries(out)] == ["oci-layout", "index.json"]


def test_gnu_tar_reads_the_tar_written_with_sendfile(tmp_path: Path) -> None:
    blobs = {Digest.of(b"x" * 1000): b"x" * 1000, Digest.of(b"y" * 513): b"y" * 513}
    write_bundle(tmp_path / "b.tar", blobs, as_tar=True)
    out = subprocess.run(["tar", "-tvf", str(tmp_path / "b.tar")], capture_output=True,
                         text=True, check=True)  # fmt: skip
    names = [line.split()[-1] for line in out.stdout.splitlines()]
    assert names == ["oci-layout", "index.json", *(layout.blob_name(d) for d in blobs)]
    assert (tmp_path / "b.tar").stat().st_size % tarfile.RECORDSIZE == 0

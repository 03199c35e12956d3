"""Blob uploads into the local registry over a real store: bytes hashed as they arrive
and committed only as the digest they hash to; one request at a time per upload; idle
uploads purged with their files; a bound on how many are open; the store's room held."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.local import uploads as uploads_module
from appliance.local.ports import LocalError
from appliance.local.uploads import LocalUploads, Session
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore

REPO = "team/app"


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Room:
    """A SpaceKeeper that grants `left` bytes in all and counts what is held."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.held = 0

    def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
        pass

    async def hold(self, size: int) -> bool:
        if size > self.left:
            return False
        self.left -= size
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.left += size
        self.held -= size


@pytest.fixture
def files(tmp_path: Path) -> FileBlobStore:
    store = FileBlobStore(tmp_path)
    store.prepare()
    return store


def temps(root: Path) -> list[Path]:
    return sorted((root / "tmp").iterdir())


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def uploads_of(files: FileBlobStore, clock: Clock, *, purge_after_s: float = 60.0,
               max_sessions: int = 8, space: Room | None = None) -> LocalUploads:  # fmt: skip
    return LocalUploads(files, purge_after_s=purge_after_s, max_sessions=max_sessions,
                        space=space, clock=clock)  # fmt: skip


async def test_fed_bytes_are_stored_as_the_digest_they_hash_to(
    files: FileBlobStore, tmp_path: Path
) -> None:
    uploads = uploads_of(files, Clock())
    pieces = (b"a" * 100_000, b"b" * 10, b"", b"c" * 70_000)  # one goes to a thread
    data = b"".join(pieces)
    session = uploads.start(REPO)
    assert session.busy and len(uploads) == 1
    assert await uploads.feed(session, body(*pieces[:2])) == 100_010
    assert await uploads.feed(session, body(*pieces[2:])) == len(data)
    digest = Digest.of(data)
    assert await uploads.commit(session, digest) == len(data)
    assert files.path_for(digest).read_bytes() == data
    assert len(uploads) == 0 and temps(tmp_path) == []


async def test_bytes_that_hash_to_another_digest_end_the_upload_and_its_file(
    files: FileBlobStore, tmp_path: Path
) -> None:
    uploads = uploads_of(files, Clock())
    session = uploads.start(REPO)
    await uploads.feed(session, body(b"what came"))
    assert len(temps(tmp_path)) == 1
    wanted = Digest.of(b"what was named")
    with pytest.raises(LocalError) as caught:
        await uploads.commit(session, wanted)
    e = caught.value
    assert (e.status, e.code) == (400, "DIGEST_INVALID")
    assert str(Digest.of(b"what came")) in str(e)
    assert temps(tmp_path) == [] and len(uploads) == 0
    assert files.size_of(wanted) is None and files.size_of(Digest.of(b"what came")) is None
    with pytest.raises(LocalError) as caught:
        uploads.claim(REPO, session.name)
    assert (caught.value.status, caught.value.code) == (404, "BLOB_UPLOAD_UNKNOWN")


async def test_a_sha512_digest_is_refused_as_invalid_not_stored(files: FileBlobStore) -> None:
    uploads = uploads_of(files, Clock())
    session = uploads.start(REPO)
    await uploads.feed(session, body(b"x"))
    digest = Digest.of(b"x", "sha512")  # right, but only sha256 is hashed on the way
    with pytest.raises(LocalError) as caught:
        await uploads.commit(session, digest)
    assert caught.value.code == "DIGEST_INVALID" and files.size_of(digest) is None


async def test_a_busy_upload_cannot_be_claimed_until_released(files: FileBlobStore) -> None:
    uploads = uploads_of(files, Clock())
    session = uploads.start(REPO)
    with pytest.raises(LocalError) as caught:
        uploads.claim(REPO, session.name)
    assert (caught.value.status, caught.value.code) == (409, "BLOB_UPLOAD_INVALID")
    uploads.release(session)
    assert uploads.claim(REPO, session.name) is session
    with pytest.raises(LocalError) as caught:
        uploads.claim(REPO, session.name)
    assert caught.value.status == 409


async def test_an_upload_is_found_only_under_its_own_repository(files: FileBlobStore) -> None:
    uploads = uploads_of(files, Clock())
    session = uploads.start(REPO)
    uploads.release(session)
    for repository, name in (("team/other", session.name), (REPO, "no-such-upload")):
        with pytest.raises(LocalError) as caught:
            uploads.claim(repository, name)
        assert (caught.value.status, caught.value.code) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert uploads.status(REPO, session.name) is session


async def test_purge_removes_idle_uploads_older_than_the_age_and_their_files(
    files: FileBlobStore, tmp_path: Path
) -> None:
    clock = Clock(100.0)
    uploads = uploads_of(files, clock, purge_after_s=60.0)
    old, busy, young = (uploads.start(REPO) for _ in range(3))
    await uploads.feed(old, body(b"old bytes"))
    uploads.release(old)  # idle from 100
    clock.now = 150.0
    uploads.release(young)  # idle from 150; `busy` is still being written
    clock.now = 160.0
    assert uploads.purge() == 0
    clock.now = 160.5
    assert uploads.purge() == 1
    assert len(uploads) == 2 and len(temps(tmp_path)) == 2
    assert old.temp.path not in temps(tmp_path)
    with pytest.raises(LocalError):
        uploads.status(REPO, old.name)
    clock.now = 10_000.0
    assert uploads.purge() == 1  # `young` now; never one a request holds
    assert [uploads.status(REPO, busy.name)] == [busy] and temps(tmp_path) == [busy.temp.path]


async def test_a_claim_keeps_an_upload_from_being_purged(files: FileBlobStore) -> None:
    clock = Clock(100.0)
    uploads = uploads_of(files, clock, purge_after_s=60.0)
    session = uploads.start(REPO)
    uploads.release(session)
    clock.now = 150.0
    uploads.release(uploads.claim(REPO, session.name))  # continued at 150
    clock.now = 200.0
    assert uploads.purge() == 0
    assert uploads.claim(REPO, session.name) is session


async def test_beyond_max_sessions_the_oldest_idle_upload_gives_way(
    files: FileBlobStore, tmp_path: Path
) -> None:
    uploads = uploads_of(files, Clock(), max_sessions=3)
    first, second, third = (uploads.start(REPO) for _ in range(3))
    uploads.release(first)
    uploads.release(second)
    uploads.release(uploads.claim(REPO, first.name))  # continued: `second` is now the oldest
    fourth = uploads.start(REPO)
    assert len(uploads) == 3
    with pytest.raises(LocalError):
        uploads.status(REPO, second.name)
    assert second.temp.path not in temps(tmp_path) and len(temps(tmp_path)) == 3
    for kept in (first, third, fourth):
        assert uploads.status(REPO, kept.name) is kept


async def test_when_every_upload_is_busy_a_new_one_is_refused_with_429(
    files: FileBlobStore, tmp_path: Path
) -> None:
    uploads = uploads_of(files, Clock(), max_sessions=2)
    sessions = [uploads.start(REPO), uploads.start(REPO)]
    with pytest.raises(LocalError) as caught:
        uploads.start(REPO)
    assert (caught.value.status, caught.value.code) == (429, "TOOMANYREQUESTS")
    assert len(uploads) == 2 and len(temps(tmp_path)) == 2
    uploads.release(sessions[1])
    uploads.start(REPO)
    with pytest.raises(LocalError):
        uploads.status(REPO, sessions[1].name)


async def test_a_digest_the_store_has_is_committed_again_with_the_same_bytes(
    files: FileBlobStore, tmp_path: Path
) -> None:
    """A cached copy may be under eviction this very moment: the verified upload is
    committed over it (same bytes), a commit eviction sees and spares."""
    data = b"already here"
    digest = Digest.of(data)
    uploads = uploads_of(files, Clock())
    first = uploads.start(REPO)
    await uploads.feed(first, body(data))
    await uploads.commit(first, digest)
    path = files.path_for(digest)
    again = uploads.start("team/other")
    await uploads.feed(again, body(data))
    with files.watch_commits() as committed:
        assert await uploads.commit(again, digest) == len(data)
    assert str(digest) in committed
    assert path.read_bytes() == data and temps(tmp_path) == []


async def test_a_store_without_room_refuses_the_bytes_with_507(
    files: FileBlobStore, tmp_path: Path
) -> None:
    room = Room(left=0)
    uploads = uploads_of(files, Clock(), space=room)
    session = uploads.start(REPO)
    with pytest.raises(LocalError) as caught:
        await uploads.feed(session, body(b"no room for me"))
    assert (caught.value.status, caught.value.code) == (507, "BLOB_UPLOAD_INVALID")
    assert session.size == 0 and session.temp.path.stat().st_size == 0


async def test_room_held_for_an_upload_is_given_back_when_it_ends(files: FileBlobStore) -> None:
    room = Room(left=1 << 40)
    uploads = uploads_of(files, Clock(), space=room)
    stored, dropped, closed = (uploads.start(REPO) for _ in range(3))
    for session in (stored, dropped, closed):
        await uploads.feed(session, body(b"bytes"))
    assert room.held > 3 * len(b"bytes")  # held in steps while bytes come
    uploads.release(closed)
    assert closed.held == len(b"bytes")  # idle, it holds only what it wrote
    await uploads.commit(stored, Digest.of(b"bytes"))
    with pytest.raises(LocalError):
        await uploads.commit(dropped, Digest.of(b"other"))
    uploads.close()
    assert room.held == 0 and len(uploads) == 0


async def test_close_ends_idle_uploads_now_and_a_busy_one_when_its_request_lets_go(
    files: FileBlobStore, tmp_path: Path
) -> None:
    uploads = uploads_of(files, Clock())
    sessions = [uploads.start(REPO) for _ in range(3)]
    for session in sessions:
        await uploads.feed(session, body(b"partial"))
    for session in sessions[1:]:
        uploads.release(session)
    uploads.close()
    assert len(uploads) == 1 and temps(tmp_path) == [sessions[0].temp.path]  # not under it
    uploads.release(sessions[0])
    assert len(uploads) == 0 and temps(tmp_path) == []


async def test_a_failed_write_ends_the_upload_so_no_damaged_file_is_committed(
    files: FileBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = uploads_of(files, Clock())
    session = uploads.start(REPO)

    def half_written(session: Session, chunk: bytes) -> None:
        session.temp.write(chunk[: len(chunk) // 2])  # some bytes land, then the disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(uploads_module, "_write", half_written)
    with pytest.raises(LocalError) as caught:
        await uploads.feed(session, body(b"0123456789"))
    assert caught.value.status == 507
    with pytest.raises(LocalError) as gone:
        uploads.status(REPO, session.name)
    assert gone.value.code == "BLOB_UPLOAD_UNKNOWN" and temps(tmp_path) == []  # start again

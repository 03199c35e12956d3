"""Which images `regcache export` writes: those named (by tag or digest), every mirrored
tag, or every tag the store holds (mirror first, then the cache's freshest mapping), set
since a time if asked, with the signatures the mirror keeps beside them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from appliance.cli.mirror import UsageError, _cached, _image
from appliance.cli.status import _moment
from appliance.config.model import Config
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import INDEX_TYPES
from appliance.oci.names import DOCKER_HUB, DOCKER_HUB_HOSTS, ImageName, parse_image
from appliance.store.bundle import Image
from appliance.store.index import SqliteIndex

__all__ = ["Selection", "UsageError", "select"]


@dataclass(frozen=True, slots=True)
class Selection:
    images: tuple[str, ...] = ()
    mirror: bool = False
    all: bool = False
    since: str | None = None
    referrers: bool = False


async def select(config: Config, index: SqliteIndex, chosen: Selection) -> list[Image]:
    if not (chosen.images or chosen.mirror or chosen.all):
        raise UsageError("name images, or --mirror, or --all")
    try:
        since = _moment(chosen.since)
    except ValueError as e:
        raise UsageError(str(e)) from e
    after = 0.0 if since is None else dt.datetime.fromisoformat(since).timestamp()
    found: dict[str, Image] = {}
    for text in chosen.images:
        image = await _named(config, index, text)
        found.setdefault(image.name, image)
    if chosen.mirror or chosen.all:
        for image, moved_s in await _mirrored(index):
            if moved_s >= after:
                found.setdefault(image.name, image)
    if chosen.all:
        for image in await _cached_tags(index, after):
            found.setdefault(image.name, image)
    images = list(found.values())
    if chosen.referrers:
        images += await _referrers(config, index, images)
    return images


async def _described(index: SqliteIndex, name: str, tag: str, digest: Digest) -> Image:
    media_type, row = await index.manifest_type(digest), await index.blob(digest)
    if media_type is None or row is None:
        raise UsageError(f"{name}: {digest} is not a manifest in the store")
    return Image(name, tag, digest, media_type, row.size)


async def _named(config: Config, index: SqliteIndex, text: str) -> Image:
    name, place = _image(config, text, digest=True)
    plain = str(ImageName(name.domain, name.repository, name.tag))
    digest = name.digest
    if digest is None:
        served = next((t for t in await index.mirrored_tags() if t.place == place), None)
        digest = served.digest if served is not None else (
            (await _cached(config, index, name, place))[2])  # fmt: skip
    return await _described(index, plain, place.tag, digest)


async def _mirrored(index: SqliteIndex) -> list[tuple[Image, float]]:
    out = []
    for tag in await index.mirrored_tags():
        if tag.backup_of is not None:
            continue
        domain = parse_image(tag.entry).domain
        name = f"{domain}/{tag.place.repository}:{tag.place.tag}"
        image = Image(name, tag.place.tag, tag.digest, tag.media_type, tag.size)
        out.append((image, tag.moved_s))
    return out


async def _cached_tags(index: SqliteIndex, after: float) -> list[Image]:
    """Each tag the cache maps, by the name clients pull it by; an index over a single
    platform's manifest where both are mapped (clients asking differently)."""
    best: dict[str, Image] = {}
    for host, repository, tag, digest_text in await index.tags():
        rows = await index.tag_rows(host, repository, tag)
        if not rows or max(r.validated_s for r in rows) < after:
            continue
        domain = DOCKER_HUB if host in DOCKER_HUB_HOSTS else host
        name = f"{domain}/{repository}:{tag}"
        try:
            image = await _described(index, name, tag, Digest.parse(digest_text))
        except UsageError:
            continue  # evicted since: nothing to export
        if name not in best or image.media_type in INDEX_TYPES:
            best[name] = image
    return list(best.values())


async def _referrers(config: Config, index: SqliteIndex, images: list[Image]) -> list[Image]:
    out = []
    for image in images:
        _, place = _image(config, image.name)
        for digest in await index.mirror_referrers_of(place.registry, place.repository,
                                                      image.digest):  # fmt: skip
            kept = await _described(index, image.name, "", digest)
            out.append(Image(image.name, "", digest, kept.media_type, kept.size, image.digest))
    return out

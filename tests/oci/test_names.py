"""Repository names and references, with the grammar of the OCI distribution spec."""

from __future__ import annotations

import pytest

from appliance.oci.digest import Digest
from appliance.oci.names import (
    ImageName,
    InvalidName,
    check_repository,
    parse_image,
    parse_reference,
    same_repository,
)

HEX = "a" * 64


@pytest.mark.parametrize(
    "name", ["alpine", "library/alpine", "a/b/c", "my-org/my_repo", "a.b/c__d", "a--b", "0/1"]
)
def test_names_of_the_spec_grammar_are_accepted(name: str) -> None:
    assert check_repository(name) == name


@pytest.mark.parametrize(
    "name", ["", "Alpine", "a//b", "/a", "a/", "-a", "a_", "a___b", "a/.b", "a b", "a\n"]
)
def test_names_outside_the_grammar_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_repository(name)


def test_a_repository_name_is_at_most_255_characters() -> None:
    assert check_repository("a" * 255) == "a" * 255
    with pytest.raises(InvalidName):
        check_repository("a" * 256)


def test_a_reference_is_a_tag_or_a_digest() -> None:
    assert parse_reference("3.20") == "3.20"
    assert parse_reference("_private") == "_private"
    assert parse_reference("t" * 128) == "t" * 128
    assert parse_reference(f"sha256:{HEX}") == Digest("sha256", HEX)


@pytest.mark.parametrize(
    "text", ["", "-latest", ".hidden", "t" * 129, "v1/x", "latest\n", "sha256:abc", "md5:" + HEX]
)
def test_references_that_are_neither_a_tag_nor_a_digest_are_refused(text: str) -> None:
    with pytest.raises(InvalidName):
        parse_reference(text)


@pytest.mark.parametrize(
    ("host", "repository", "names"),
    [
        ("registry-1.docker.io", "alpine", ("alpine", "library/alpine")),
        ("index.docker.io", "library/alpine", ("library/alpine", "alpine")),
        ("registry-1.docker.io", "library/a/b", ("library/a/b",)),  # not an official image
        ("registry-1.docker.io", "team/app", ("team/app",)),
        ("ghcr.io", "alpine", ("alpine",)),  # only Docker Hub adds `library/`
        ("ghcr.io", "library/alpine", ("library/alpine",)),
    ],
)
def test_docker_hub_official_images_go_by_two_names(
    host: str, repository: str, names: tuple[str, ...]
) -> None:
    assert same_repository(host, repository) == names


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("alpine", ImageName("docker.io", "library/alpine")),
        ("alpine:3.20", ImageName("docker.io", "library/alpine", "3.20")),
        ("docker.io/library/alpine:3.20", ImageName("docker.io", "library/alpine", "3.20")),
        ("registry-1.docker.io/alpine:3.20", ImageName("docker.io", "library/alpine", "3.20")),
        ("index.docker.io/team/app", ImageName("docker.io", "team/app")),
        ("team/app:v1", ImageName("docker.io", "team/app", "v1")),
        ("GHCR.io/org/app:v1", ImageName("ghcr.io", "org/app", "v1")),
        ("ghcr.io/org/app", ImageName("ghcr.io", "org/app")),  # one-part only on Hub
        ("localhost/app:1", ImageName("localhost", "app", "1")),
        ("localhost:5000/app:1", ImageName("localhost:5000", "app", "1")),
        ("eu.gcr.io/p/a/b", ImageName("eu.gcr.io", "p/a/b")),
        (
            f"alpine@sha256:{HEX}",
            ImageName("docker.io", "library/alpine", None, Digest("sha256", HEX)),
        ),
        (f"ghcr.io/o/a:v1@sha256:{HEX}", ImageName("ghcr.io", "o/a", "v1", Digest("sha256", HEX))),
    ],
)
def test_an_image_is_read_as_docker_reads_it(text: str, name: ImageName) -> None:
    assert parse_image(text) == name


def test_an_image_name_prints_in_its_one_normal_form() -> None:
    assert str(parse_image("alpine:3.20")) == "docker.io/library/alpine:3.20"
    assert str(parse_image("index.docker.io/library/alpine:3.20")) == str(
        parse_image("alpine:3.20")
    )
    assert str(parse_image(f"ghcr.io/o/a@sha256:{HEX}")) == f"ghcr.io/o/a@sha256:{HEX}"


@pytest.mark.parametrize(
    "text", ["", "Alpine", "alpine:", "alpine:-x", "alpine@sha256:abc", "alpine@latest",
             "ghcr.io/", "a//b", "alpine:3.20:x"],
)  # fmt: skip
def test_a_name_outside_the_grammar_is_refused(text: str) -> None:
    with pytest.raises(InvalidName):
        parse_image(text)

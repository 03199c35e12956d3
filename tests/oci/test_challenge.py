"""`WWW-Authenticate` challenges as real registries send them, and hostile ones."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.challenge import bearer, parse_challenges


def test_challenges_as_real_registries_send_them() -> None:
    quay = 'Basic realm="Quay", Bearer realm="https://quay.io/v2/auth",service="quay.io"'
    assert [c.scheme for c in parse_challenges(quay)] == ["basic", "bearer"]
    hub = bearer('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                 'scope="repository:library/alpine:pull,push"')  # fmt: skip
    assert hub is not None and hub.params["scope"] == "repository:library/alpine:pull,push"
    assert bearer('bearer realm="https://gcr.io/v2/token",service="gcr.io"') is not None
    assert bearer('Basic realm="ecr"') is None


@given(st.text(max_size=200))
def test_challenge_parser_never_raises(header: str) -> None:
    parse_challenges(header)

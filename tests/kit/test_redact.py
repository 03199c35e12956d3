"""The log redaction backstop."""

from __future__ import annotations

import io
import logging

from appliance.kit.redact import RedactingFilter, redact

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def test_credentials_and_signed_urls_are_scrubbed() -> None:
    line = (
        f"error Authorization: Bearer {JWT} basic=Basic YWxpY2U6c2VjcmV0 url="
        "https://cdn.example/blob?X-Amz-Signature=abcd1234&X-Amz-Credential=AKIA/x&keep=1"
        "&token=s3cr3t"
    )
    clean = redact(line)
    for secret in (JWT, "YWxpY2U6c2VjcmV0", "abcd1234", "AKIA", "s3cr3t"):
        assert secret not in clean
    assert "keep=1" in clean and "https://cdn.example/blob" in clean


def test_filter_covers_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        logger.warning("upstream said %s", f"Bearer {JWT}")
        try:
            raise ValueError(f"GET https://x/?access_token={JWT}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert JWT not in stream.getvalue() and "[redacted" in stream.getvalue()


def test_every_cloud_s_signed_url_parameters_are_scrubbed() -> None:
    urls = {
        "https://production.cloudflare.docker.com/registry-v2/docker/registry/v2/blobs/"
        "sha256/ab/abcd/data?verify=1712345678-Q2xvdWRmbGFyZVNpZw%3D%3D": ["1712345678-Q2x"],
        "https://d1.cloudfront.net/b?Expires=1712345678&Signature=cfSig~x&Key-Pair-Id=K2KP"
        "&Policy=eyJTdGF0ZW1lbnQiOltdfQ__": ["cfSig", "K2KP", "1712345678", "eyJTdGF0"],
        "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2024-04-05T10%3A00Z&sp=r"
        "&sig=azSig%2Bx": ["azSig", "2024-04-05", "sp=r"],
        "https://bucket.s3.amazonaws.com/b?X-Amz-Credential=AKIAX%2F2024&X-Amz-Signature=s3s"
        "&X-Amz-Security-Token=FQoSess": ["AKIAX", "s3s", "FQoSess"],
        "https://storage.googleapis.com/b?X-Goog-Signature=gsig&token=tk1": ["gsig", "tk1"],
    }
    for url, secrets in urls.items():
        clean = redact(f"error=GET {url}: ClientPayloadError")
        assert clean.startswith("error=GET https://") and "[redacted]" in clean
        for secret in secrets:
            assert secret not in clean, clean

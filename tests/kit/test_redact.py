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

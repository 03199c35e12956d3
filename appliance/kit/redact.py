"""A logging filter that scrubs secrets from every line, whatever logger wrote it.

Code never logs credentials on purpose; this is the backstop for what libraries and
exception messages carry: Authorization values, tokens, signed-URL query strings (S3 and
GCS `X-Amz-*`/`X-Goog-*`, Azure SAS `sig`/`se`/`sp`, CloudFront `Signature`/`Policy`/
`Key-Pair-Id`/`Expires`, Docker Hub's Cloudflare `verify=<expiry>-<signature>`). Messages
that carry upstream URLs are also built redacted (`redact`), so that no handler, however
installed, ever sees a signature.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = (
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE), r"\1 [redacted]"),
    (
        re.compile(
            r"([?&;](?:[a-z_-]*token|password|passwd|secret|sig|signature|verify|"
            r"x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
            r"x-goog-credential|se|sp|sv|skoid|key-pair-id|policy|expires)=)[^&\s\"'#]+",
            re.IGNORECASE,
        ),
        r"\1[redacted]",
    ),
    # JWTs anywhere: three base64url parts, the first being a JSON header ("eyJ").
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install(handler: logging.Handler) -> None:
    handler.addFilter(RedactingFilter())

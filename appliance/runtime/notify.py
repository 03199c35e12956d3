"""systemd's readiness protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET.

Without the variable (not under systemd, or Type=simple) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send e.g. "READY=1"; True if a notification socket was there to receive it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as e:
        log.warning("systemd notify failed state=%s error=%s", state.split("=")[0], e)
        return False
    return True

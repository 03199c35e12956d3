"""Signals while regcache serves: SIGTERM and SIGINT stop it, SIGHUP re-reads the config,
applies what is safe at run time (log level, offline) and empties the DNS cache."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from appliance.config.model import ConfigError, load_config
from appliance.runtime.notify import notify
from appliance.runtime.offline import OfflineSwitch

log = logging.getLogger(__name__)


def on_stop(stack: contextlib.AsyncExitStack) -> asyncio.Event:
    """SIGTERM and SIGINT set the returned event; undone when `stack` closes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
        stack.callback(loop.remove_signal_handler, sig)
    return stop


def on_reload(
    stack: contextlib.AsyncExitStack,
    path: Path,
    offline: OfflineSwitch,
    forget: Callable[[], None],
) -> None:
    """SIGHUP reloads `path`, from when regcache listens: a reload ends with READY=1, which
    must not reach systemd before the listeners are up; undone when `stack` closes."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload, path, offline, forget)
    stack.callback(loop.remove_signal_handler, signal.SIGHUP)


def reload(path: Path, offline: OfflineSwitch, forget: Callable[[], None] = lambda: None) -> None:
    """Re-read the config and apply what is safe at run time (log level, offline), and
    `forget()` what was learnt from outside (the DNS cache). Everything else needs a
    restart; an invalid file changes nothing."""
    notify("RELOADING=1")
    try:
        fresh = load_config(path)
    except ConfigError as e:
        log.error("config reload refused error=%s", e)
    else:
        logging.getLogger().setLevel(fresh.log_level)
        offline.always = fresh.offline
        forget()
        log.warning(
            "config reloaded log_level=%s offline=%s dns_cache=emptied "
            "(other changes need a restart)",
            fresh.log_level,
            fresh.offline,
        )
    notify("READY=1")

"""The values a config is written in (addresses, endpoints, sizes, secret references),
their YAML scalar parsers and the range checks its fields use."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from appliance.config import strict_yaml
from appliance.config.hostnames import Hostname, HostPattern, check_hostname, check_pattern

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port, written `127.0.0.1:53` or `[::1]:53` in YAML."""

    address: IPAddress
    port: int

    @classmethod
    def parse(cls, text: Any) -> Endpoint:
        if not isinstance(text, str):
            raise ValueError(f"expected 'ADDRESS:PORT', got {text!r}")
        host, sep, port = text.rpartition(":")
        if not sep or (":" in host and not host.startswith("[")):
            raise ValueError(f"expected 'ADDRESS:PORT' (IPv6 as '[ADDR]:PORT'), got {text!r}")
        address = host.removeprefix("[").removesuffix("]")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as e:
            raise ValueError(f"{address!r} is not an IP address") from e
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"port {port!r} is not a number in 1..65535")
        return cls(ip, int(port))

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"

    def receives(self, destination: Endpoint) -> bool:
        """Whether a listener here gets what is sent to `destination` (for loop checks)."""
        if self.port != destination.port:
            return False
        if self.address.is_unspecified:
            return destination.address.is_loopback or destination.address.version == (
                self.address.version
            )
        return self.address == destination.address


def positive(value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")


def non_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")


def between(low: float, high: float) -> Any:
    def _check(value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")

    return _check


def one_of(*choices: str) -> Any:
    def _check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return _check


def non_empty(value: tuple[object, ...]) -> None:
    if not value:
        raise ValueError("must not be empty")


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Size:
    """A byte count (`50GiB`, `500MB`, `1048576`) or a share of the store's filesystem
    (`80%`)."""

    bytes: int = 0
    percent: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Size:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(value)
        text = str(value).strip().replace(" ", "") if isinstance(value, str) else ""
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = -1.0
            if not 0 < percent <= 100:
                raise ValueError(f"expected a percentage in (0, 100], got {value!r}")
            return cls(percent=percent)
        split = len(text) - len(text.lstrip("0123456789."))
        number, unit = text[:split], text[split:].upper()
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit not in _UNITS or amount < 0:
            raise ValueError(
                f"expected a size like '50GiB', '500MB', a byte count or '80%', got {value!r}"
            )
        return cls(int(amount * _UNITS[unit]))

    def of(self, filesystem_bytes: int) -> int:
        if self.percent is None:
            return self.bytes
        return int(filesystem_bytes * self.percent / 100)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Duration:
    """A span of time: seconds (`300`) or a number with a unit (`90s`, `15m`, `6h`, `1d`)."""

    seconds: float

    @classmethod
    def parse(cls, value: Any) -> Duration:
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return cls(float(value))
        text = value.strip() if isinstance(value, str) else ""
        unit = _DURATION_UNITS.get(text[-1:], 0)
        try:
            amount = float(text[:-1]) if unit else -1.0
        except ValueError:
            amount = -1.0
        if amount < 0:
            raise ValueError(f"expected a duration like '300', '15m', '6h' or '1d', got {value!r}")
        return cls(amount * unit)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: a file (read at each use, so rotation needs no restart) or
    an environment variable. Never the config itself."""

    file: Path | None = None
    env: str | None = None

    def read(self) -> str:
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip()
        assert self.env is not None
        value = os.environ.get(self.env)
        if value is None:
            raise OSError(f"environment variable {self.env} is not set")
        return value


def one_source(ref: SecretRef) -> None:
    if (ref.file is None) == (ref.env is None):
        raise ValueError("give exactly one of 'file' and 'env'")


def _typed(tp: type[Any]) -> Any:
    def parse(value: Any) -> Any:
        if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"expected an integer, got {value!r}")
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {value!r}")
            return float(value)
        if not isinstance(value, tp):
            raise ValueError(
                f"expected {tp.__name__ if tp is not str else 'a string'}, got {value!r}"
            )
        return value

    return parse


def _ip(tp: Any) -> Any:
    def parse(value: Any) -> Any:
        try:
            return tp(str(value))
        except ValueError as e:
            raise ValueError(f"{value!r} is not an {tp.__name__[:4]} address") from e

    return parse


def _text(parse: Any) -> Any:
    return lambda value: parse(_typed(str)(value))


def _any_ip(value: Any) -> IPAddress:
    return ipaddress.ip_address(str(value))


def _network(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        raise ValueError(f"{value!r} is not a network in CIDR notation: {e}") from e


SCALARS: dict[object, strict_yaml.Parser] = {
    str: _typed(str),
    int: _typed(int),
    float: _typed(float),
    bool: _typed(bool),
    Path: lambda v: Path(_typed(str)(v)),
    IPv4Address: _ip(IPv4Address),
    IPv6Address: _ip(IPv6Address),
    IPAddress: _any_ip,
    IPNetwork: _network,
    Endpoint: Endpoint.parse,
    Size: Size.parse,
    Duration: Duration.parse,
    Hostname: _text(check_hostname),
    HostPattern: _text(check_pattern),
}

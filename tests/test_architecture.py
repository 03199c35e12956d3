"""Import rules of ARCHITECTURE.md, checked on the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"
ADAPTERS = {"store", "upstream", "tls", "dns", "proxy"}
CORE = {"oci", "cache"}
THIRD_PARTY_IO = {"aiohttp", "dnslib", "aiosqlite", "cryptography", "ssl"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def adapter_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "appliance" and parts[1:2] and parts[1] in ADAPTERS else None


def modules() -> list[tuple[str, Path]]:
    return [
        (path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else "", path)
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_adapters_do_not_import_each_other() -> None:
    found = [
        (str(path.relative_to(PACKAGE)), name)
        for part, path in modules()
        if part in ADAPTERS
        for name in imports(path)
        if adapter_of(name) not in (None, part)
    ]
    assert found == []


def test_core_imports_no_io_library() -> None:
    found = [
        (str(path.relative_to(PACKAGE)), name)
        for part, path in modules()
        if part in CORE
        for name in imports(path)
        if name.split(".")[0] in THIRD_PARTY_IO or adapter_of(name) is not None
    ]
    assert found == []


def test_rules_see_the_package() -> None:
    parts = {part for part, _ in modules()}
    assert {"dns", "tls", "proxy"} <= parts  # the walk above is not vacuous
    assert any("appliance.dns" in name for name in imports(PACKAGE / "main.py"))

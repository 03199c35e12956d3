"""Import rules of ARCHITECTURE.md, checked on the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"
ADAPTERS = {"store", "upstream", "tls", "dns", "proxy"}
CORE = {"oci", "cache", "kit", "mirror", "local"}
THIRD_PARTY_IO = {
    "aiohttp",
    "dnslib",
    "aiosqlite",
    "cryptography",
    "ssl",
    "aiobotocore",
    "botocore",
}


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
        (path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else path.stem, path)
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


def _ours(path: Path) -> set[str]:
    """The appliance packages or top-level modules `path` imports (`appliance.x.y` → x)."""
    return {
        name.split(".")[1]
        for name in imports(path)
        if name.startswith("appliance.") and len(name.split(".")) > 1
    }


def _values(name: str) -> bool:
    return name == "appliance.config.values"


def test_kit_and_config_stand_on_their_own() -> None:
    """kit/ (small building blocks) imports only itself and config's value types; config/
    only itself, kit/ and oci/ (pure vocabulary: image names in `mirror.entries`): every
    other room may use them without a cycle."""
    found = [
        (str(path.relative_to(PACKAGE)), name)
        for part, path in modules()
        if part in ("kit", "config")
        for name in imports(path)
        if (
            name.startswith("appliance.")
            and name.split(".")[1] not in ("kit", "config", *(("oci",) if part == "config" else ()))
        )
        or (
            part == "kit"
            and name.startswith("appliance.config")
            and name != "appliance.config.values"
        )
    ]
    assert found == []


def test_admin_reads_figures_and_imports_no_adapter() -> None:
    found = [
        (str(path.relative_to(PACKAGE)), name)
        for part, path in modules()
        if part == "admin"
        for name in _ours(path)
        if name in ADAPTERS | {"runtime", "cli", "main"}
    ]
    assert found == []


def test_only_the_composition_root_and_the_cli_wire_parts() -> None:
    """runtime/ builds parts from the config for main.py and cli/; nothing else imports
    it, main.py or cli/."""
    found = [
        (str(path.relative_to(PACKAGE)), name)
        for part, path in modules()
        if part not in ("cli", "runtime", "main")
        for name in _ours(path)
        if name in ("runtime", "cli", "main")
    ]
    assert found == []
    assert not any("main" in _ours(path) for part, path in modules() if part == "runtime")


def test_rules_see_the_package() -> None:
    parts = {part for part, _ in modules()}
    assert {"dns", "tls", "proxy", "kit", "config", "admin", "runtime", "cli"} <= parts
    assert any("appliance.dns" in name for name in imports(PACKAGE / "main.py"))
    assert "runtime" in _ours(PACKAGE / "cli" / "serve.py")  # the walk sees cli/


def test_the_cache_knows_the_mirror_only_through_its_port() -> None:
    """mirror/ drives the cache; the cache asks it only through `cache.ports.MirrorView`."""
    found = [
        (str(path.relative_to(PACKAGE)), name)
        for part, path in modules()
        if part == "cache"
        for name in _ours(path)
        if name == "mirror"
    ]
    assert found == []


def test_one_module_speaks_s3() -> None:
    """The S3 SDK stays behind one store adapter (issue #19): swapping it touches one file."""
    found = {
        str(path.relative_to(PACKAGE))
        for _, path in modules()
        for name in imports(path)
        if name.split(".")[0] in ("aiobotocore", "botocore", "types_aiobotocore_s3")
    }
    assert found == {"store/s3.py"}

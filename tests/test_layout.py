"""Tests mirror the package (ARCHITECTURE.md, issue #14): every module of `appliance/` has
a test file of its own name, so its tests are found where one would look for them.

- `appliance/X/Y.py` → `tests/X/test_Y.py` or `tests/X/test_Y_<aspect>.py`;
- `appliance/Y.py` → `tests/test_Y.py`;
- `appliance/X/__init__.py` holding code → `tests/X/test_X.py` (or `_<aspect>`).

Exempt: `__main__.py`, and `__init__.py` files holding only a docstring. A module that
needs no test of its own goes in `NEEDS_NO_TEST` with the reason; the list must stay
short and true.
"""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appliance"
TESTS = ROOT / "tests"

NEEDS_NO_TEST: dict[str, str] = {
    # A path under appliance/; one ending in "/" covers every module below it.
    "proxy/site.py": "a frozen dataclass of config values, no behaviour of its own",
    "local/ports.py": "declarations: the LocalIndex protocol (store/localstate.py implements"
    " it, tested there), two records, and LocalError, whose fields every test under"
    " tests/local reads",
}


def exempt(path: Path) -> bool:
    if path.name == "__main__.py":
        return True
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for node in body
    )


def modules(package: Path = PACKAGE) -> list[str]:
    """The modules the rule applies to, as paths under the package."""
    return sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if not exempt(p))


def home_of(module: str) -> tuple[PurePosixPath, str]:
    """The test folder (under `tests/`) and the name its test files carry."""
    parts = PurePosixPath(module).parts
    folder = PurePosixPath(*parts[:-1])
    if parts[-1] == "__init__.py":
        return folder, parts[-2] if len(parts) > 1 else PACKAGE.name
    return folder, PurePosixPath(parts[-1]).stem


def files_testing(module: str, package: Path = PACKAGE, tests: Path = TESTS) -> list[Path]:
    """`test_<name>.py` and `test_<name>_<aspect>.py`, but not the test file of a sibling
    module whose name merely starts with `<name>_` (`bounded_map.py` beside `bounded.py`)."""
    folder, name = home_of(module)
    where = tests / folder
    longer = [p.stem for p in (package / folder).glob(f"{name}_*.py")]
    found = [where / f"test_{name}.py"] if (where / f"test_{name}.py").is_file() else []
    for candidate in sorted(where.glob(f"test_{name}_*.py")):
        tested = candidate.stem.removeprefix("test_")
        if not any(tested == other or tested.startswith(other + "_") for other in longer):
            found.append(candidate)
    return found


def allowance(module: str) -> str | None:
    for entry in NEEDS_NO_TEST:
        if module == entry or (entry.endswith("/") and module.startswith(entry)):
            return entry
    return None


def test_every_module_has_a_test_file_of_its_name() -> None:
    missing = []
    for module in modules():
        if files_testing(module) or allowance(module) is not None:
            continue
        folder, name = home_of(module)
        expected = PurePosixPath("tests") / folder / f"test_{name}.py"
        missing.append(
            f"appliance/{module}: add {expected} (or test_{name}_<aspect>.py there),"
            " or give it a reason in NEEDS_NO_TEST"
        )
    assert missing == [], "\n".join(missing)


def test_the_walk_saw_the_whole_package() -> None:
    found = modules()
    assert len(found) >= 60, found
    for module in ("main.py", "cache/service.py", "store/index.py", "tls/leaves.py"):
        assert module in found
    exempted = [p for p in PACKAGE.rglob("*.py") if exempt(p)]
    assert all(p.name in ("__init__.py", "__main__.py") for p in exempted)
    assert len(found) > 4 * len(exempted)


def test_every_allow_list_entry_is_a_module_that_still_needs_it() -> None:
    assert len(NEEDS_NO_TEST) <= 9, "keep the allow-list short: write the tests instead"
    for entry, reason in NEEDS_NO_TEST.items():
        assert reason.strip(), f"{entry}: give the reason it needs no test"
        covered = [m for m in modules() if allowance(m) == entry]
        assert covered, f"appliance/{entry} is no module any more: drop it from NEEDS_NO_TEST"
        untested = [m for m in covered if not files_testing(m)]
        assert untested, f"appliance/{entry} has its test files now: drop it from NEEDS_NO_TEST"


def test_the_rule_finds_a_modules_files_and_no_siblings(tmp_path: Path) -> None:
    package, tests = tmp_path / "appliance", tmp_path / "tests"
    for path in ("__init__.py", "main.py", "kit/__init__.py", "kit/bounded.py",
                 "kit/bounded_map.py", "kit/fill.py", "cli/__init__.py", "cli/__main__.py",
                 "tests_of/x.py"):  # fmt: skip
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text("x = 1\n" if path == "cli/__init__.py" else '"""Doc."""\n')
    for path in ("test_main.py", "kit/test_bounded_map.py", "kit/test_fill_disk_full.py",
                 "kit/test_fills.py", "cli/test_cli.py", "kit/test_bounded.txt"):  # fmt: skip
        (tests / path).parent.mkdir(parents=True, exist_ok=True)
        (tests / path).write_text("")
    assert modules(package) == [
        "cli/__init__.py", "kit/bounded.py", "kit/bounded_map.py", "kit/fill.py", "main.py",
        "tests_of/x.py",
    ]  # fmt: skip
    found = {m: [p.relative_to(tests).as_posix() for p in files_testing(m, package, tests)]
             for m in modules(package)}  # fmt: skip
    assert found == {
        "cli/__init__.py": ["cli/test_cli.py"],
        "kit/bounded.py": [],  # test_bounded_map.py is its sibling's
        "kit/bounded_map.py": ["kit/test_bounded_map.py"],
        "kit/fill.py": ["kit/test_fill_disk_full.py"],  # an aspect; test_fills.py is not
        "main.py": ["test_main.py"],
        "tests_of/x.py": [],
    }

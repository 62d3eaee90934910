"""The layering of docs/architecture.md, read from the source: who may import whom.

A newcomer trusts the folders to tell the pure core from the edges; these tests keep that
true. They parse every module's imports (including imports inside functions) and fail
with the offending module, line and import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = {"modelroute.server": ROOT / "server", "modelroute.storage": ROOT / "storage"}

# The contract: generated stubs every part may use.
CONTRACT = ("modelroute.v1", "modelroute.config.v1", "modelroute.admin.v1")

# Part -> the parts of ours it may import (besides itself and the contract).
# Anything that is not one of our modules (stdlib, third-party) is not restricted here,
# except the I/O libraries the core must not touch (CORE_FORBIDDEN).
ALLOWED: dict[str, frozenset[str]] = {
    "modelroute.server.core": frozenset(),
    "modelroute.server.telemetry": frozenset(),
    "modelroute.storage": frozenset(),
    "modelroute.server.runtime": frozenset(
        {"modelroute.server.core", "modelroute.server.telemetry", "modelroute.storage"}
    ),
    "modelroute.server.usage": frozenset(
        {"modelroute.server.core", "modelroute.server.telemetry", "modelroute.storage"}
    ),
    "modelroute.server.api": frozenset(
        {
            "modelroute.server.core",
            "modelroute.server.runtime",
            "modelroute.server.usage",
            "modelroute.server.telemetry",
            "modelroute.storage",
        }
    ),
}
# The wiring (app) and the CLI sit on top and may import every part.
TOP = (
    "modelroute.server.app",
    "modelroute.server.options",
    "modelroute.server.workers",
    "modelroute.server.process",
    "modelroute.server.cli",
)
CORE_FORBIDDEN = ("aetcd", "grpc", "sqlalchemy", "sqlmodel", "httpx", "fastapi", "opentelemetry")


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    for package, root in SOURCE_ROOTS.items():
        if path.is_relative_to(root):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join((package, *parts))
    raise AssertionError(f"{path} is outside the source roots")


def source_files() -> list[Path]:
    return sorted(
        path
        for root in SOURCE_ROOTS.values()
        for path in root.rglob("*.py")
        if "versions" not in path.relative_to(root).parts
    )


def source_root_of(name: str) -> str:
    return next(package for package in SOURCE_ROOTS if within(name, package))


def package_of(path: Path) -> str:
    """The package a module's relative imports start from (its own, for an __init__)."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_module(path: Path, node: ast.ImportFrom) -> str:
    """The absolute name `from <module> import` names, relative forms resolved."""
    if node.level == 0:
        assert node.module is not None
        return node.module
    base = package_of(path).split(".")
    assert node.level <= len(base), f"{module_name(path)}:{node.lineno}: beyond the top"
    parts = base[: len(base) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def imports_of(path: Path) -> list[Import]:
    importer = module_name(path)
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(importer, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = imported_module(path, node)
            # `from package import module` imports the module, not just the package.
            found += [
                Import(importer, node.lineno, f"{module}.{alias.name}") for alias in node.names
            ]
    return found


def import_style_faults(path: Path) -> list[str]:
    """Relative inside a source root (so the tree itself shows who imports whom: no tool
    needs the `package-dir` mapping to follow them), absolute to another root or the
    contract (the import names the distribution's package, as a user of it would)."""
    importer = module_name(path)
    own_root = source_root_of(importer)
    faults = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
            relative = False
        else:
            targets = [imported_module(path, node)]
            relative = node.level > 0
        for target in targets:
            same_root = within(target, own_root)
            if same_root and not relative:
                faults.append(f"{importer}:{node.lineno}: import {target} relatively")
            elif relative and not same_root:
                faults.append(f"{importer}:{node.lineno}: import {target} by its full name")
    return faults


def within(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def part_of(name: str) -> str | None:
    return next((part for part in ALLOWED if within(name, part)), None)


def is_ours(name: str) -> bool:
    return within(name, "modelroute") and not any(within(name, c) for c in CONTRACT)


def all_imports() -> list[Import]:
    return [found for path in source_files() for found in imports_of(path)]


def test_every_server_module_belongs_to_a_part() -> None:
    """A module dropped back into the flat server/ folder has no place in the picture."""
    homeless = [
        name
        for name in map(module_name, source_files())
        if part_of(name) is None
        and name not in (*TOP, "modelroute.server")
        and not any(within(name, top) for top in TOP)
    ]
    assert homeless == []


def test_the_core_imports_nothing_of_ours_but_the_contract_and_does_no_io() -> None:
    offending = [
        found
        for found in all_imports()
        if within(found.importer, "modelroute.server.core")
        and (
            (is_ours(found.target) and not within(found.target, "modelroute.server.core"))
            or any(within(found.target, library) for library in CORE_FORBIDDEN)
        )
    ]
    assert offending == [], "\n".join(map(str, offending))


def test_each_part_imports_only_the_parts_below_it() -> None:
    offending: list[Import] = []
    for found in all_imports():
        part = part_of(found.importer)
        if part is None or not is_ours(found.target):
            continue
        target_part = part_of(found.target)
        if target_part != part and target_part not in ALLOWED[part]:
            offending.append(found)
    assert offending == [], "\n".join(map(str, offending))


def test_only_the_wiring_touches_etcd_and_no_service_touches_sqlalchemy() -> None:
    """etcd is reached through storage/ (the RuntimeStore port, the config source);
    database failures arrive as storage's StoreUnavailableError."""
    offending = [
        found
        for found in all_imports()
        if within(found.importer, "modelroute.server")
        and (
            (within(found.target, "aetcd") and found.importer != "modelroute.server.app")
            or (
                within(found.target, "sqlalchemy")
                and part_of(found.importer)
                in ("modelroute.server.api", "modelroute.server.runtime")
            )
        )
    ]
    assert offending == [], "\n".join(map(str, offending))


def test_the_checker_sees_the_imports_the_rules_are_about() -> None:
    """Guards the checker itself, so the tests above cannot pass by seeing nothing."""
    imports = all_imports()
    assert any(
        f.importer == "modelroute.server.core.resolver"
        and within(f.target, "modelroute.server.core.snapshot")
        for f in imports
    )
    assert any(
        part_of(f.importer) == "modelroute.server.api" and part_of(f.target) == "modelroute.storage"
        for f in imports
    )
    assert is_ours("modelroute.storage.etcd") and not is_ours("modelroute.v1.router_pb2")


def test_imports_are_relative_within_a_source_root_and_absolute_across() -> None:
    # Alembic runs migrations/env.py as a file, not as a module of its package.
    alembic_env = ROOT / "storage" / "migrations" / "env.py"
    faults = [
        fault
        for path in source_files()
        if path != alembic_env
        for fault in import_style_faults(path)
    ]
    assert faults == [], "\n".join(faults)


def test_relative_imports_resolve_to_the_modules_they_name() -> None:
    """Guards the resolution the layering tests rely on."""
    resolver = ROOT / "server" / "core" / "resolver.py"
    api_init = ROOT / "server" / "api" / "__init__.py"

    def first_import(path: Path, source: str) -> str:
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.ImportFrom)
        return imported_module(path, node)

    assert first_import(resolver, "from .snapshot import Snapshot") == (
        "modelroute.server.core.snapshot"
    )
    assert first_import(resolver, "from ..telemetry import metrics") == (
        "modelroute.server.telemetry"
    )
    assert first_import(api_init, "from .errors import rpc") == "modelroute.server.api.errors"
    assert first_import(api_init, "from .. import app") == "modelroute.server"


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers.py (or fixtures), not in test modules."""
    tests_dir = ROOT / "tests"
    offending = []
    for path in sorted(tests_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith(("tests.test_", "tests.conftest")):
                    offending.append(f"{path.name}:{node.lineno} imports {node.module}")
    assert offending == []

"""DESIGN.md §1: the sans-IO core may not import the event loop, sockets, the clock or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tidelog"
FORBIDDEN = {"asyncio", "socket", "time", "random"}
SANS_IO = [
    *sorted((SRC / "wire").rglob("*.py")),
    SRC / "metadata.py",
    SRC / "permissions.py",
    *(SRC / "storage" / name for name in ("partition.py", "offsets.py", "segment.py", "recovery.py")),
    *(SRC / "storage" / name for name in ("integrity.py", "index_cache.py", "metalog.py")),
]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", SANS_IO, ids=lambda p: str(p.relative_to(SRC)))
def test_layering_given_sans_io_module_when_parsed_should_not_import_io_modules(path: Path) -> None:
    assert path.exists()
    assert not imported_modules(path) & FORBIDDEN


def test_layering_given_checker_when_module_imports_socket_should_flag_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom time import monotonic\n")
    assert imported_modules(bad) & FORBIDDEN == {"socket", "time"}

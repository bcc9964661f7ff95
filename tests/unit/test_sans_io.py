"""The protocol state machines and the endpoint lifecycle are sans-IO: they import no trio (nor
any other I/O library), so they are tested in microseconds and reused by any driver."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kpc_trio

PACKAGE = Path(kpc_trio.__file__).parent
PURE = [
    *sorted((PACKAGE / "mqtt").glob("*.py")),
    *sorted((PACKAGE / "kaa").glob("*.py")),
    PACKAGE / "nats" / "protocol.py",
    PACKAGE / "hub.py",
]
IO_LIBRARIES = {"trio", "trio_websocket", "socket", "ssl", "asyncio", "nats", "h11"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", PURE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_module_does_no_io(path: Path) -> None:
    assert not imported_roots(path) & IO_LIBRARIES

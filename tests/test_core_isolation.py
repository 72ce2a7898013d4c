"""The protocol core stays sans-I/O: no trio, sockets, SQLite or web stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ocpd.proto

CORE = Path(ocpd.proto.__file__).parent
FORBIDDEN = {
    "trio",
    "socket",
    "sqlite3",
    "sqlite_utils",
    "hypercorn",
    "quart",
    "quart_trio",
    "trio_websocket",
    "asyncio",
    "anyio",
    "threading",
    "time",
    "ssl",
    "http",
    "urllib",
}
# Modules that must not even be loaded indirectly by importing the core.
IO_STACK = {
    "trio",
    "socket",
    "sqlite3",
    "sqlite_utils",
    "hypercorn",
    "quart",
    "quart_trio",
    "trio_websocket",
}


def test_core_modules_import_no_io_by_source() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [(path.name, n) for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_core_loads_no_io_module() -> None:
    modules = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    probe = (
        "import sys\n"
        + "".join(f"import ocpd.proto.{m}\n" for m in modules)
        + f"bad = sorted(m for m in {sorted(IO_STACK)!r} if m in sys.modules)\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert len(modules) >= 10

"""The run-and-report tail every process-level benchmark shares."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from conformance.process import ProcessFailed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["run_and_report"]


def run_and_report(
    name: str,
    run: Callable[[Path], Awaitable[dict[str, Any]]],
    *,
    out: Path,
    summary: Callable[[dict[str, Any]], None],
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """Run ``run`` in a scratch directory under trio, write its result to ``out``.

    Failures of the processes it starts (and ``errors``) are printed, one
    line each, and make the exit status 1; no result file is written then.
    """
    caught: tuple[type[Exception], ...] = (
        ProcessFailed,
        subprocess.CalledProcessError,
        trio.TooSlowError,
        *errors,
    )
    result: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix=f"ocpd-{name.replace('.', '-')}-") as tmp:
            result = trio.run(run, Path(tmp))
    except* caught as group:
        for exc in group.exceptions:
            print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if result is None:
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    summary(result)
    print(f"results: {out}")
    return 0

"""What every process-level benchmark shares: machine facts and the run-and-report tail."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from conformance.process import ProcessFailed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

__all__ = [
    "cpu_model",
    "load_average",
    "machine_facts",
    "run_and_report",
    "target_status",
    "wrk_version",
]


def cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or None


def machine_facts(libraries: Iterable[str]) -> dict[str, Any]:
    """Python, platform, CPUs and the installed versions of ``libraries``."""
    versions: dict[str, str | None] = {}
    for name in libraries:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "libraries": versions,
    }


def target_status(meets_target: bool | None) -> str:
    """The table's last column: ``ok``, ``ABOVE TARGET``, or nothing without a target."""
    return {True: "ok", False: "ABOVE TARGET", None: ""}[meets_target]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def wrk_version(wrk: str) -> str:
    """``wrk -v``'s first line without the copyright (it exits with status 1)."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


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

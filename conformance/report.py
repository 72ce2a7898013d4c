"""Writers for a suite :class:`~conformance.suite.Report`: JSON, JUnit XML and a table.

JUnit: one ``testcase`` per requirement (classname ``ocp-conformance.<level>``,
name the requirement id). Failed and not-tested requirements carry a
``failure`` element whose ``type`` is ``failed`` or ``not_tested``; a SHOULD
requirement says in its message that it does not fail the run. The detail of
every requirement is in its ``system-out``.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from datetime import UTC
from typing import TYPE_CHECKING, Final

from conformance.suite import (
    NOT_IMPLEMENTED,
    SUITE_NAME,
    SUITE_VERSION,
    VECTOR_NOTE,
    Report,
    Result,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["format_table", "junit_xml", "write_json", "write_junit"]

STATUS_LABELS: Final = {"pass": "PASS", "fail": "FAIL", "not_tested": "NOT TESTED"}
TABLE_WIDTH: Final = 100


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def _failure_message(result: Result) -> str:
    prefix = "SHOULD, does not fail the run: " if result.requirement.strength == "SHOULD" else ""
    return prefix + result.detail


def junit_xml(report: Report) -> bytes:
    """The report as JUnit XML (the dialect GitLab, Jenkins and GitHub actions read)."""
    failures = report.count("fail") + report.count("not_tested")
    total_time = sum(r.duration_seconds for r in report.results)
    common = {
        "tests": str(len(report.results)),
        "failures": str(failures),
        "errors": "0",
        "skipped": "0",
        "time": f"{total_time:.3f}",
    }
    root = ET.Element("testsuites", {"name": SUITE_NAME, **common})
    suite = ET.SubElement(root, "testsuite", {"name": f"{SUITE_NAME}.{report.level}", **common})
    suite.set("timestamp", report.started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    properties = ET.SubElement(suite, "properties")
    values = {
        "suite_version": SUITE_VERSION,
        "level": report.level,
        "conformant": str(report.conformant).lower(),
        "vector_note": VECTOR_NOTE,
        **{f"target.{k}": v for k, v in report.targets.as_json().items() if v},
    }
    for name, value in values.items():
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for result in report.results:
        r = result.requirement
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"{SUITE_NAME}.{r.level}",
                "name": r.id,
                "time": f"{result.duration_seconds:.3f}",
            },
        )
        if result.status != "pass":
            kind = "failed" if result.status == "fail" else "not_tested"
            failure = ET.SubElement(
                case, "failure", {"type": kind, "message": _failure_message(result)}
            )
            failure.text = f"{r.strength} ({r.section}, {r.kind}): {r.title}"
        out = ET.SubElement(case, "system-out")
        out.text = (
            f"{r.strength} {r.section} [{r.kind}] {r.title}\n{result.status}: {result.detail}"
        )
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def write_junit(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(junit_xml(report))


def format_table(report: Report) -> str:
    """A plain-text table of every requirement and the verdict, for a terminal."""
    lines = [
        f"{SUITE_NAME} {SUITE_VERSION}: level {report.level}",
        *(f"  {k:<10} {v}" for k, v in report.targets.as_json().items() if v),
        "",
        f"{'STATUS':<10} {'REQ':<6} {'KIND':<6} {'ID':<26} DETAIL (TITLE when no check)",
    ]
    indent = " " * 51
    for result in report.results:
        r = result.requirement
        head = f"{STATUS_LABELS[result.status]:<10} {r.strength:<6} {r.kind:<6} {r.id:<26}"
        unchecked = result.status == "not_tested" and result.detail == NOT_IMPLEMENTED
        if result.status == "fail" or (result.status == "not_tested" and not unchecked):
            # A failure is the point of the table, and so is why a check could not
            # judge (an absent peer endpoint...): the whole detail, wrapped.
            wrapped = textwrap.wrap(result.detail, TABLE_WIDTH - len(indent)) or [""]
            lines.append(f"{head} {wrapped[0]}")
            lines.extend(indent + line for line in wrapped[1:])
        else:
            # One line each; the full text is in the JSON and JUnit reports.
            text = r.title if unchecked else result.detail
            short = textwrap.shorten(text, TABLE_WIDTH - len(indent), placeholder=" ...")
            lines.append(f"{head} {short}")
    s = report.summary()
    unmet_must = report.unmet("MUST")
    failed_must = sum(1 for r in unmet_must if r.status == "fail")
    lines += [
        "",
        f"{s['passed']} passed, {s['failed']} failed, {s['not_tested']} not tested, "
        f"{s['total']} requirements at level {report.level} "
        f"({sum(1 for r in report.results if r.requirement.kind == 'vector')} of them vector "
        "checks of the suite itself, not of the target)",
        f"MUST not met: {len(unmet_must)} ({failed_must} failed, "
        f"{len(unmet_must) - failed_must} not tested); "
        f"SHOULD not met: {s['should_unmet']} (does not fail the run)",
    ]
    if report.conformant:
        lines.append(f"verdict: CONFORMANT to level {report.level}")
    else:
        lines.append(
            f"verdict: NOT CONFORMANT to level {report.level}: "
            f"{len(unmet_must)} MUST requirement(s) not met"
        )
    return "\n".join(lines) + "\n"

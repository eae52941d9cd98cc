"""The suite-wide PHI scan of everything carecli logged while the tests ran.

tests/conftest.py points every carecli process of the run (``CARECLI_LOG_FILE``,
inherited by the subprocesses) at one DEBUG-level file and captures the
records logged in the pytest process itself *before* the redacting filter
(so a message that carries PHI is caught even though the file would have
hidden it). At the end of the session :func:`scan` looks through both for
SSN, e-mail, phone and date-of-birth patterns and for the distinctive names
and addresses the fixtures give their synthetic members; any finding fails
the run (exit status 1) and is listed in the terminal summary.

The patterns are written independently of carecli/logs.py's filter, so the
scan also checks the filter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from carecli.logs import JsonLinesFormatter

PATTERNS: dict[str, re.Pattern[str]] = {
    "SSN": re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"),
    "SSN (undashed, named)": re.compile(r"(?i)ssn\W{0,20}\d{9}(?!\d)"),
    "e-mail": re.compile(r"(?<![\w.+/-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"),
    "phone": re.compile(r"(?<![\w-])(?:\(\d{3}\)\s?|\d{3}[ .-])?\d{3}[ .-]\d{4}(?![\w-])"),
    "date of birth": re.compile(r"(?i)(?:dob|birth)[^\n]{0,30}?\d{4}-\d{2}-\d{2}"),
}
# Words the fixtures put in their synthetic members' names and addresses (platform_fixtures.MEMBER_VALUES,
# test_import.person) precisely so that a leak can be grepped for.
KNOWN_MEMBER_WORDS = re.compile(r"(?i)\b(?:Okafor|Harbour Road|Quenby\d*|Marrowfield\d*|Quillfeather|Zephyrton)\b")
# What carecli's own filter leaves behind: the first line of defence (no values in messages) failed.
REDACTION_MARK = "[redacted]"


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str
    excerpt: str


class RawCapture(logging.Handler):
    """Keeps the JSON line of every record logged in this process, unredacted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonLinesFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record the formatter cannot handle is still scanned as text
            self.lines.append(str(record.msg))


def _scan_lines(lines: list[str], where: str, *, marks: bool) -> list[Finding]:
    findings = []
    for number, line in enumerate(lines, 1):
        for kind, pattern in PATTERNS.items():
            match = pattern.search(line)
            if match:
                findings.append(Finding(f"{where}:{number}", kind, match.group(0)))
        match = KNOWN_MEMBER_WORDS.search(line)
        if match:
            findings.append(Finding(f"{where}:{number}", "a fixture member's name or address", match.group(0)))
        if marks and REDACTION_MARK in line:
            findings.append(Finding(f"{where}:{number}", "a value carecli's filter had to redact", line[:160]))
    return findings


def scan(files: list[Path], capture: RawCapture) -> tuple[int, list[Finding]]:
    """(lines scanned, findings) over the log files and this process's raw records."""
    total, findings = 0, []
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        total += len(lines)
        findings += _scan_lines(lines, path.name, marks=True)
    total += len(capture.lines)
    findings += _scan_lines(capture.lines, "in-process records", marks=False)
    return total, findings


def log_files(suite_log: Path, state_dir: Path) -> list[Path]:
    """The suite's log and its rotations, plus logs written to the default place (tests with their own env)."""
    found = sorted(suite_log.parent.glob(suite_log.name + "*"))
    found += sorted(state_dir.glob("**/carecli.log*"))
    return [path for path in found if path.is_file()]

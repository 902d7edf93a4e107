"""The reliability suite's bookkeeping: cases tried and passed per category, printed at the end.

Each test module names its category in ``CATEGORY`` (else its own name stands in); every test item
(each parametrized case) is one case. Tests may add notes (the soak's figures, say) through ``reliability_note``. The summary
goes to the terminal, and is appended to the file named by ``ATELIER_RELIABILITY_REPORT`` when set,
so a release note can quote the table.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

_COUNTS = pytest.StashKey[dict[str, Counter[str]]]()
_NOTES = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    module = getattr(item, "module", None)
    # A module without CATEGORY is still counted, under its own name ("test_faults" -> "faults").
    category = getattr(module, "CATEGORY", None) or (module.__name__.rpartition(".")[2].removeprefix("test_")
                                                     if module is not None else None)
    # One count per case: its call, or its setup when that failed or skipped it.
    if category is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        tally = item.config.stash.setdefault(_COUNTS, {}).setdefault(category, Counter())
        tally["cases"] += 1
        if hasattr(report, "wasxfail"):
            tally["xfailed" if report.skipped else "failed"] += 1
        else:
            tally[report.outcome] += 1
    return report


@pytest.fixture(scope="session")
def reliability_note(pytestconfig: pytest.Config) -> Callable[[str, str], None]:
    """``note(category, text)``: a line for the summary."""
    notes = pytestconfig.stash.setdefault(_NOTES, [])

    def note(category: str, text: str) -> None:
        notes.append(f"  {category}: {text}")

    return note


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    counts = config.stash.get(_COUNTS, {})
    notes = config.stash.get(_NOTES, [])
    if not counts and not notes:
        return
    lines = []
    for category, tally in sorted(counts.items()):
        known = f", {tally['xfailed']} known bugs (xfail)" if tally["xfailed"] else ""
        skipped = f", {tally['skipped']} skipped" if tally["skipped"] else ""
        lines.append(f"category {category}: {tally['cases']} cases, {tally['passed']} passed, "
                     f"{tally['failed']} failed{known}{skipped}")
    lines += notes
    terminalreporter.write_sep("-", "reliability summary")
    for line in lines:
        terminalreporter.write_line(line)
    if target := os.environ.get("ATELIER_RELIABILITY_REPORT"):
        with open(target, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

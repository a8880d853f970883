"""The report's building blocks: tables, figure specs and their HTML and Markdown
rendering, shared by the report, the final report and the slides."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from analysis.compare import StrategyComparison, ValidationReport
from analysis.results import RunResult

Row = list[str]


@dataclass(frozen=True)
class Table:
    """A titled table of strings (already formatted)."""

    title: str
    headers: Row
    rows: list[Row]
    note: str = ""


@dataclass(frozen=True)
class ReportContent:
    """What the report shows, for the documents made from it (final report, slides).

    Attributes:
        title: the report's title.
        runs: the runs compared (sweep runs left out).
        tables: the report's tables, in order.
        figures: each figure's spec and its PNG, in order.
        animation: the GIF of one recovery, if written.
        validation: the simulator against the measurement.
        comparisons: Gemini against the baseline.
        calibration_scenarios: scenarios used to calibrate the simulator.
    """

    title: str
    runs: tuple[RunResult, ...]
    tables: tuple[Table, ...]
    figures: tuple[tuple[FigureSpec, Path], ...]
    animation: Path | None
    validation: ValidationReport
    comparisons: tuple[StrategyComparison, ...]
    calibration_scenarios: tuple[str, ...] = ()


def _s(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) < 0.1:
        return f"{value * 1e3:.{digits}g} ms"
    return f"{value:.{digits}g} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def ratio_text(value: float | None) -> str:
    """A ratio with one decimal from 1 up, two significant digits below (0.042x, not 0.0x),
    never in exponent notation."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 0.95:
        return f"{value:.1f}x"
    digits = 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{digits}f}x"


def markdown_table(table: Table) -> str:
    """A table as GitHub Markdown, with its title as a heading and its note after it."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"## {table.title}", ""]
    if table.rows:
        lines.append("| " + " | ".join(cell(h) for h in table.headers) + " |")
        lines.append("|" + "|".join("---" for _ in table.headers) + "|")
        lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows)
    else:
        lines.append("(nothing to show)")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def html_table(table: Table) -> str:
    """A table as HTML, escaped."""
    out = [f"<h2>{html.escape(table.title)}</h2>"]
    if table.rows:
        out.append("<table><thead><tr>")
        out.extend(f"<th>{html.escape(h)}</th>" for h in table.headers)
        out.append("</tr></thead><tbody>")
        for row in table.rows:
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
            out.append(f"<tr>{cells}</tr>")
        out.append("</tbody></table>")
    else:
        out.append("<p>(nothing to show)</p>")
    if table.note:
        out.append(f"<p class='note'>{html.escape(table.note)}</p>")
    return "\n".join(out)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: file name, heading, caption, and how to draw it."""

    name: str
    title: str
    caption: str
    draw: Callable[[], Figure]


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #444; font-size: 0.9em; }
.caption { color: #555; font-size: 0.9em; }
"""


def _duration(seconds: float) -> str:
    """A run's length: seconds, minutes, hours or days, three figures."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _bytes(count: float) -> str:
    """Bytes in MB below a gigabyte, else GB or TB, without exponents."""
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count / 1e6:,.1f} MB"

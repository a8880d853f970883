"""The slide deck: one self-contained HTML file built from the report's figures.

``write_slides(content, out)`` writes ``slides.html``: a title slide (the scenarios and the
validation verdict), a slide of key results, **one slide per figure** of the report (each
image embedded as a ``data:`` URI, with its title and caption), and a slide with the
simulator's largest misses. Nothing is fetched from the network: the styles and the few lines
of script are inline.

Keys: right arrow, down arrow, page down, space or a click go forward; left arrow, up arrow,
page up or backspace go back; home and end jump to the first and the last slide. The slide
number is kept in the address (``#5``), so a reload stays on the slide.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analysis.render import ReportContent

MISSES_SHOWN = 6
"""Rows of the miss table on its slide (the final report has them all)."""

STYLE = """
html, body { margin: 0; height: 100%; background: #1b1b1b; font-family: system-ui, sans-serif; }
.slide { display: none; box-sizing: border-box; width: 100vw; height: 100vh; padding: 3vh 4vw;
         background: #fff; color: #222; flex-direction: column; }
.slide.current { display: flex; }
.slide h1 { font-size: 5vh; margin: 20vh 0 2vh; }
.slide h2 { font-size: 3.6vh; margin: 0 0 1.5vh; }
.slide p, .slide li { font-size: 2.4vh; line-height: 1.35; }
.slide.figure img { flex: 1; min-height: 0; object-fit: contain; }
.slide .caption { color: #555; font-size: 2vh; margin: 1vh 0 0; }
.slide table { border-collapse: collapse; font-size: 1.9vh; }
.slide th, .slide td { border: 1px solid #ccc; padding: 0.4vh 0.6vw; text-align: left; }
.counter { position: fixed; right: 1.5vw; bottom: 1vh; color: #888; font-size: 1.6vh; }
"""

SCRIPT = """
const slides = Array.from(document.querySelectorAll('.slide'));
const counter = document.querySelector('.counter');
let current = 0;
function show(index) {
  current = Math.max(0, Math.min(slides.length - 1, index));
  slides.forEach((slide, i) => slide.classList.toggle('current', i === current));
  counter.textContent = (current + 1) + ' / ' + slides.length;
  history.replaceState(null, '', '#' + (current + 1));
}
document.addEventListener('keydown', (event) => {
  const forward = ['ArrowRight', 'ArrowDown', 'PageDown', ' ', 'Enter'];
  const back = ['ArrowLeft', 'ArrowUp', 'PageUp', 'Backspace'];
  if (forward.includes(event.key)) { show(current + 1); event.preventDefault(); }
  else if (back.includes(event.key)) { show(current - 1); event.preventDefault(); }
  else if (event.key === 'Home') { show(0); }
  else if (event.key === 'End') { show(slides.length - 1); }
});
document.addEventListener('click', () => show(current + 1));
show((parseInt(location.hash.slice(1), 10) || 1) - 1);
"""


def _slide(kind: str, inner: str) -> str:
    return f"<section class='slide {kind}'>\n{inner}\n</section>"


def deck_slides(content: ReportContent) -> list[str]:
    """The slides' HTML, in order (module docstring)."""
    from analysis.final_report import figures, key_results, miss_table, misses
    from analysis.render import _data_uri, html_table

    scenarios = sorted({run.scenario for run in content.runs})
    labels = sorted({run.label for run in content.runs})
    slides = [
        _slide(
            "title",
            f"<h1>{html.escape(content.title)}</h1>"
            f"<p>Scenario(s): {html.escape(', '.join(scenarios) or '-')}; runs: "
            f"{html.escape(', '.join(labels) or '-')}</p>"
            f"<p>{html.escape(content.validation.verdict)}</p>",
        )
    ]
    items = "".join(f"<li>{html.escape(item)}</li>" for item in key_results(content))
    slides.append(_slide("results", f"<h2>Key results</h2><ul>{items}</ul>"))
    for figure in figures(content):
        mime = "image/gif" if figure.path.suffix == ".gif" else "image/png"
        slides.append(
            _slide(
                "figure",
                f"<h2>{html.escape(figure.title)}</h2>"
                f"<img alt='{html.escape(figure.path.stem)}' "
                f"src='{_data_uri(figure.path, mime)}'>"
                f"<p class='caption'>{html.escape(figure.caption)}</p>",
            )
        )
    rows = misses(content.validation)
    table = miss_table(rows[:MISSES_SHOWN], content.validation)
    more = f" (the {MISSES_SHOWN} largest of {len(rows)})" if len(rows) > MISSES_SHOWN else ""
    body = html_table(table).replace("</h2>", f"{html.escape(more)}</h2>", 1)
    slides.append(_slide("misses", body))
    return slides


def write_slides(content: ReportContent, out: str | Path) -> Path:
    """Write ``slides.html`` into ``out``; its path."""
    path = Path(out) / "slides.html"
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(content.title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(deck_slides(content))
        + "\n<div class='counter'></div>\n"
        + f"<script>{SCRIPT}</script>\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path

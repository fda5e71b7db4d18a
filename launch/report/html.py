"""report/index.html: one static page per run, sweep or comparison, opened from disk (no server, no network).

The page is summary.md rendered to HTML (headings, paragraphs, lists, tables, the figures next to it by relative
path; PDF figures as links), followed by the trial table with links to every trial's run directory and its
TensorBoard logdir (`tensorboard --logdir=<dir>`). Every table sorts by a click on its header (a few lines of
inline JavaScript, numbers numerically, `–` last); the style is inline too, so the page needs no other file than
the figures beside it.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

# Sorts a table by the clicked column: numbers as numbers, text as text, empty and `–` cells last.
SORT_JS = """
document.querySelectorAll("table").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var t = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var x = parseFloat(t);
        return t === "" || t === "\\u2013" ? null : (isNaN(x) || !/^[-+]?[0-9.]/.test(t) ? t : x);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _inline(text: str) -> str:
    """Escaped text with markdown's `code`, **bold** and [link](href)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{html.escape(m[2])}">{m[1]}</a>', out)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """An HTML table; cells are escaped markdown-inline text, or HTML as given with `raw`."""
    cell = (lambda c: c) if raw else _inline
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _figure(alt: str, src: str) -> str:
    if src.endswith(".pdf"):
        return f'<p><a href="{html.escape(src)}">{html.escape(alt)} (PDF)</a></p>\n'
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}"></figure>\n'


def markdown_to_html(text: str) -> str:
    """The markdown report modules write (headings, paragraphs, `- ` lists, pipe tables, `![alt](src)` images)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append(table(block[0], [r for r in block[1:] if not all(set(c) <= {"-"} for c in r)]))
            continue
        if m := re.fullmatch(r"(#{1,4}) (.*)", line):
            out.append(f"<h{len(m[1])}>{_inline(m[2])}</h{len(m[1])}>\n")
        elif m := re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip()):
            out.append(_figure(m[1], m[2]))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>\n")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>\n")
        i += 1
    return "".join(out)


def trial_links(out: Path, trials: Sequence[tuple[str, str, Path, str]]) -> str:
    """The trial table: (sweep label, trial id, run directory, outcome) → links relative to `out` (index.html's
    folder) to the run directory and its TensorBoard logdir."""
    rows = []
    for sweep, tid, run_dir, outcome in trials:
        rel = Path(os.path.relpath(run_dir, out))
        rows.append([html.escape(sweep), html.escape(tid), html.escape(outcome),
                     f'<a href="{html.escape(rel.as_posix())}/">run directory</a>',
                     f'<a href="{html.escape((rel / "tb").as_posix())}/">tb/</a> '
                     f'<code>tensorboard --logdir={html.escape(str(run_dir / "tb"))}</code>'])
    return "<h2>Trial directories</h2>\n" + table(["sweep", "trial", "outcome", "run", "TensorBoard"], rows, raw=True)


def write_index(out: Path, title: str, summary_md: str, trials: Sequence[tuple[str, str, Path, str]]) -> Path:
    """out/index.html from the report's summary.md and its trials (see `trial_links`)."""
    body = markdown_to_html(summary_md) + (trial_links(out, trials) if trials else "")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head>\n'
            f"<body>\n{body}<script>{SORT_JS}</script>\n</body></html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path

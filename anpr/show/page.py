"""The pages anpr writes for people (the compliance report, a data subject's letter): their
look, escaping of every outside text, tables, and writing the file as anpr's private file."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from anpr.errors import ConfigError
from anpr.files import write_private
from anpr.redact import printable


def write_report(path: Path, text: str, what: str = "the report") -> None:
    """Write an output file (a report, a letter, eval's errors), readable by its owner only
    (0600, never through a link): it describes the deployment, or holds plates."""
    try:
        write_private(path, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


# Markdown's active characters in text from outside (names, a refused query's purpose): HTML
# (`<script>`, `<img onerror>`, an autolink) as entities, which every renderer shows as text;
# links, images, code and emphasis, and a table cell's end, backslash-escaped. An underscore
# is left: inside a word (parking_fps) it is never emphasis, and elsewhere it only italicises.
MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **{ch: "\\" + ch for ch in "\\`*[]|"}})


def md_cell(value: Any) -> str:
    """`value` as Markdown text that renders as itself, on one line (redact.printable)."""
    return printable(str(value)).translate(MD_ESCAPES)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, sans-serif; color: #1a202c; background: #fff; margin: 2rem auto;
  max-width: 62rem; padding: 0 1rem; line-height: 1.4; font-size: 15px; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #cbd5e0; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin-bottom: .3rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #cbd5e0; padding: .3rem .45rem; text-align: left; vertical-align: top;
  overflow-wrap: break-word; }
table.pairs th { width: 14rem; }
table.pairs td { overflow-wrap: anywhere; }
th { background: #edf2f7; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; }
.notice { border-left: 4px solid #2b6cb0; background: #ebf8ff; padding: .5rem .8rem; }
.allow { color: #22543d; font-weight: bold; }
.deny, .bad { color: #9b2c2c; font-weight: bold; }
.ok { color: #22543d; font-weight: bold; }
.missing { color: #9b2c2c; }
ul.announced { font-family: ui-monospace, monospace; font-size: .82rem; padding-left: 1.2rem; }
figure { margin: .5rem 0; }
figcaption { font-size: .85rem; color: #4a5568; }
svg { width: 100%; max-width: 760px; height: auto; }
@page { size: A4; margin: 14mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 10.5pt; background: #fff; color: #000; }
  h2, h3 { break-after: avoid; page-break-after: avoid; }
  tr, figure, .notice { break-inside: avoid; page-break-inside: avoid; }
  thead { display: table-header-group; }
  th, .notice { background: #fff; }
  section { break-before: auto; }
}
"""


def esc(value: Any) -> str:
    return html.escape(printable(str(value)), quote=True)


def cell_text(value: Any) -> str:
    """Text for a table cell: escaped, and breakable after an underscore, so that a column of
    codes (law_enforcement_request) fits a printed page."""
    return esc(value).replace("_", "_<wbr>")


def html_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (), table_id: str = ""
) -> str:
    right = set(numeric)
    head = "".join(f'<th{" class=n" if i in right else ""} scope="col">{esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f"<td{' class=n' if i in right else ''}>{cell_text(value)}</td>" for i, value in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_value_table(rows: Iterable[tuple[str, Any]], table_id: str = "") -> str:
    body = "".join(f'<tr><th scope="row">{cell_text(k)}</th><td>{cell_text(v)}</td></tr>' for k, v in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f'<table class="pairs"{ident}>{body}</table>'

"""Small HTML building blocks for self-contained pages: one file, inline CSS, images as data URIs.

Everything user-provided goes through :func:`html.escape`; nothing is fetched from the network, so
a page opens offline and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable
from pathlib import Path

CSS = """
:root { --fg:#1d2430; --muted:#667085; --line:#e4e7ec; --bg:#ffffff; --soft:#f6f7f9; --accent:#1f5fbf;
        --good:#1a7f37; --bad:#b42318; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", "Microsoft YaHei",
       sans-serif; color: var(--fg); background: var(--bg); margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
.muted { color: var(--muted); }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; margin: 16px 0; }
nav.toc a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 320px; white-space: pre-wrap; word-break: break-word; }
td.blank { min-width: 110px; background: #fffdf0; }
table.wide { width: 100%; }
.good { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 130px; }
.card .value { font-size: 20px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; }
img.plot { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; margin: 4px 8px 8px 0; }
.plots { display: flex; flex-wrap: wrap; align-items: flex-start; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 4px; padding: 10px; overflow-x: auto;
      font-size: 12px; max-height: 420px; }
details summary { cursor: pointer; color: var(--accent); }
.note { background: var(--soft); border-left: 3px solid var(--muted); padding: 6px 10px; margin: 8px 0; }
.heatmap { margin: 10px 0 14px; }
.heatmap-title { font-weight: 600; margin-bottom: 2px; }
.heatmap-text { border: 1px solid var(--line); border-radius: 4px; padding: 8px; line-height: 1.9;
                white-space: pre-wrap; word-break: break-word; }
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def fmt(value: object) -> str:
    """Numbers with 4 significant digits; everything else as text."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def page(title: str, body: str, subtitle: str = "") -> str:
    """A complete HTML document."""
    sub = f'<p class="muted">{esc(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{esc(title)}</h1>{sub}\n{body}\n</main></body></html>\n")


def table(headers: list[str], rows: Iterable[list[object]], *, text_columns: Iterable[int] = (),
          blank_columns: Iterable[int] = (), css_class: str = "") -> str:
    """A table; numbers right-aligned, ``text_columns`` wrapped, ``blank_columns`` shaded for filling in."""
    text_columns, blank_columns = set(text_columns), set(blank_columns)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            kind = "blank" if i in blank_columns else "text" if i in text_columns else (
                "num" if isinstance(value, int | float) and not isinstance(value, bool) else "")
            cells.append(f'<td class="{kind}">{esc(fmt(value))}</td>' if kind else f"<td>{esc(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, object]], key: str = "metric") -> str:
    return table([key, "value"], [[k, v] for k, v in pairs])


def cards(pairs: Iterable[tuple[str, object]]) -> str:
    """Headline numbers as small cards."""
    items = "".join(f'<div class="card"><div class="value">{esc(fmt(v))}</div><div class="label">{esc(k)}</div></div>'
                    for k, v in pairs)
    return f'<div class="cards">{items}</div>'


def image(path: Path, alt: str) -> str:
    """An ``<img>`` whose PNG is embedded as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    return f'<div class="note">{esc(text)}</div>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def toc(entries: list[tuple[str, str]]) -> str:
    links = "".join(f'<a href="#{esc(anchor)}">{esc(title)}</a>' for anchor, title in entries)
    return f'<nav class="toc">{links}</nav>'

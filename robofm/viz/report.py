"""One self-contained HTML report: tables, PNGs and GIFs embedded as base64, mp4 files linked beside it."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}
figure{margin:1em 0}figcaption{color:#444;font-size:90%}.note{color:#a60}"""


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list]


@dataclass
class Report:
    """What the report shows, in order: notes, tables, then figures (PNG), then videos (GIF, with its mp4)."""

    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)
    videos: list[tuple[str, Path, Path]] = field(default_factory=list)  # (caption, GIF, mp4)


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _cell(value) -> str:
    return html.escape(f"{value:.2f}" if isinstance(value, float) else str(value))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    return f"<h3>{html.escape(t.caption)}</h3><table><tr>{head}</tr>{body}</table>"


def write_report(path: Path, report: Report) -> Path:
    """Write `report` to `path` (an .html file); mp4 links are relative, so keep them in the same folder."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(report.title)}</h1>"]  # fmt: skip
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in report.notes]
    parts += [_table(t) for t in report.tables]
    for caption, png in report.images:
        parts.append(f"<figure><img src='{_data_uri(png, 'image/png')}' alt='{html.escape(png.name)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
    for caption, gif, mp4 in report.videos:
        rel = html.escape(Path(mp4).relative_to(path.parent).as_posix())
        parts.append(f"<figure><img src='{_data_uri(gif, 'image/gif')}' alt='{html.escape(gif.name)}'>"
                     f"<figcaption>{html.escape(caption)} (<a href='{rel}'>{rel}</a>)</figcaption></figure>")  # fmt: skip
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path

"""A self-contained HTML document (figures embedded as data URIs) and its markdown twin.

Pure rendering: a :class:`Document` of sections, each with paragraphs, tables (lists of dict
rows) and figures (matplotlib figures or PNG bytes), becomes one HTML string that needs no
network and no other file to be viewed, and a markdown summary.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from awp.extras import require


@dataclass
class Table:
    """Rows of a table; ``columns`` fixes the order (default: the first row's keys).

    ``missing`` is written where a value is None or NaN: one text for every column, or a text
    per column (e.g. ``{"alpha": "no fit"}``; other columns get an en dash).
    """

    rows: Sequence[Mapping[str, Any]]
    columns: Sequence[str] | None = None
    caption: str = ""
    missing: str | Mapping[str, str] = "–"

    def cell(self, row: Mapping[str, Any], column: str) -> str:
        """One cell as text (see :func:`fmt`)."""
        missing = self.missing if isinstance(self.missing, str) else self.missing.get(column, "–")
        return fmt(row.get(column), missing=missing)

    def cols(self) -> list[str]:
        if self.columns is not None:
            return list(self.columns)
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.update(dict.fromkeys(r))
        return list(seen)


@dataclass
class FigureBlock:
    """A figure as PNG bytes with a caption."""

    png: bytes
    caption: str = ""
    alt: str = "figure"

    @classmethod
    def from_figure(cls, fig: Figure, caption: str = "", alt: str = "figure") -> FigureBlock:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        return cls(buf.getvalue(), caption, alt)


@dataclass
class InteractiveBlock:
    """A plotly figure (its JSON, :mod:`figures.interactive`) drawn by the HTML's script, with
    a static image of the same view beside it (for print, readers without JavaScript, and the
    markdown twin's caption)."""

    spec: str
    static: FigureBlock
    caption: str = ""
    alt: str = "interactive figure"


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables, figures and interactive figures, in
    that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureBlock] = field(default_factory=list)
    interactive: list[InteractiveBlock] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def fmt(value: Any, *, missing: str = "–") -> str:
    """A cell as text: floats with 4 significant digits, None/NaN as ``missing``."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return missing
        return f"{value:.4g}"
    return str(value)


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; }
"""


def _table_html(t: Table) -> str:
    cols = t.cols()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(t.cell(r, c))}</td>" for c in cols) + "</tr>"
        for r in t.rows
    )
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(f: FigureBlock) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    cap = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
    return (
        f'<figure><img alt="{html.escape(f.alt)}" src="data:image/png;base64,{data}">{cap}</figure>'
    )


def _interactive_html(block: InteractiveBlock, index: int) -> str:
    # The spec is JSON: inside a <script> only "</" could end it early; escape it.
    spec = block.spec.replace("</", "<\\/")
    cap = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
    png = base64.b64encode(block.static.png).decode("ascii")
    static = f'<img alt="{html.escape(block.static.alt)}" src="data:image/png;base64,{png}">'
    return (
        f'<figure class="interactive"><div id="plot-{index}" class="plotly-plot" '
        f'role="img" aria-label="{html.escape(block.alt)}"></div>{cap}'
        f"<details open><summary>static image</summary>{static}</details></figure>\n"
        f"<script>(function () {{ var spec = {spec}; Plotly.newPlot('plot-{index}', spec.data, "
        "spec.layout, {responsive: true, displaylogo: false}); })();</script>"
    )


def _plotly_js() -> str:
    """plotly.js, once per document that has interactive figures (offline: no CDN)."""
    offline = require("plotly.offline", purpose="the report's interactive surfaces")
    # "</script" inside the library would end the element: split it as a string.
    return offline.get_plotlyjs().replace("</script", "<\\/script")


def _paragraph_html(p: str) -> str:
    if p.startswith("NOTE:"):
        return f'<p class="note">{html.escape(p[5:].strip())}</p>'
    return f"<p>{html.escape(p)}</p>"


def render_html(doc: Document) -> str:
    """The whole document as one HTML string (UTF-8, no external resources)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        *(_paragraph_html(p) for p in doc.intro),
    ]
    if any(s.interactive for s in doc.sections):
        parts.append(f'<script type="text/javascript">{_plotly_js()}</script>')
    plots = 0
    for s in doc.sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [_paragraph_html(p) for p in s.paragraphs]
        parts += [_table_html(t) for t in s.tables]
        parts += [_figure_html(f) for f in s.figures]
        for block in s.interactive:
            parts.append(_interactive_html(block, plots))
            plots += 1
    parts.append("</body></html>")
    return "\n".join(parts)


# Characters that start markdown (or inline HTML) anywhere in a line; the HTML report shows all
# text as written (html.escape), so the markdown twin escapes them. An underscore only at the
# edge of a word: inside one (test_robust_acc) it is no emphasis.
_MD_INLINE = re.compile(r"([\\`*\[\]~|]|<(?=[A-Za-z/!?])|&(?=#?\w+;))")
_MD_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_MD_LINE_START = re.compile(r"^(\s*)(?:([#+\-=>])|(\d+)([.)]))", flags=re.M)


def md_text(text: object, *, block: bool = True) -> str:
    """Text (a label, a caption, a sentence) as markdown that shows it as written, as the HTML
    report does: markup characters backslash-escaped, so ``*AT*``, ``<b>`` or ``[x](y)`` in a
    label stay text; with ``block`` (text that begins a line) also what would start a heading,
    a list or a quote there ("# ", "- ", "1. ", "> ")."""
    text = _MD_INLINE.sub(r"\\\1", str(text))
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    if not block:
        return text
    return _MD_LINE_START.sub(
        lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"),
        text,
    )


def md_cell(text: str) -> str:
    """A markdown table cell: inline markup escaped (:func:`md_text`, pipes included; a cell
    begins no line, so "0.51" stays as it is), line breaks joined, so the row keeps its
    columns."""
    return " ".join(md_text(text, block=False).split())


def _md_table(t: Table) -> str:
    cols = t.cols()
    lines = [f"**{md_text(t.caption)}**", ""] if t.caption else []
    lines.append("| " + " | ".join(md_cell(c) for c in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    lines += ["| " + " | ".join(md_cell(t.cell(r, c)) for c in cols) + " |" for r in t.rows]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "figure"


def markdown_figures(doc: Document, folder: str) -> dict[str, bytes]:
    """The PNG of every figure of ``doc`` (static views of interactive ones included), by its
    path relative to the markdown file: ``<folder>/figNN_<alt>.png``, in reading order."""
    out: dict[str, bytes] = {}
    for s in doc.sections:
        for f in [*s.figures, *(b.static for b in s.interactive)]:
            out[f"{folder}/fig{len(out) + 1:02d}_{_slug(f.alt)}.png"] = f.png
    return out


def render_markdown(doc: Document, figure_folder: str | None = None) -> str:
    """Markdown summary: the same text and tables; each figure as an image linked by its
    relative path (:func:`markdown_figures` gives the files), or by caption only without a
    ``figure_folder``."""
    paths = iter(markdown_figures(doc, figure_folder)) if figure_folder else None
    out = [f"# {md_text(doc.title)}", ""]
    out += [md_text(p.removeprefix("NOTE:").strip()) + "\n" for p in doc.intro]
    for s in doc.sections:
        out += [f"## {md_text(s.title)}", ""]
        out += [md_text(p.removeprefix("NOTE:").strip()) + "\n" for p in s.paragraphs]
        out += [_md_table(t) + "\n" for t in s.tables]
        figs = [(f, "") for f in s.figures]
        figs += [(b.static, " (rotatable in the HTML report)") for b in s.interactive]
        for f, note in figs:
            caption = md_text(f.caption or f.alt) + note
            if paths is None:
                if f.caption:
                    out.append(f"*Figure: {caption}*\n")
            else:
                alt = md_text(f.alt)
                out.append(f"![{alt}]({next(paths)})\n\n*Figure: {caption}*\n")
    return "\n".join(out)

"""The report: one self-contained HTML file (and a markdown summary) from result folders.

Reads what the measures left on disk (:mod:`awp_landscape.report.collect`), so it can be rerun
at any time, and draws the sections in the registry's order
(:data:`awp_landscape.measures.MEASURES`),
after the outcome: verdicts over seeds, or a single run's statements computed by
:mod:`analysis.outcome` from those numbers, including when AT-AWP did *not* come out flatter or
with the smaller gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from analysis.outcome import outcome
from analysis.replicates import MIN_SEEDS
from awp.io import atomic_write_set, atomic_write_text, exclusive_output
from awp_landscape.measures import MEASURES
from awp_landscape.report.collect import Results, collect, measurements
from awp_landscape.report.over_seeds import replicates_section
from awp_landscape.report.sections import drawn, intro, not_measured, story_section
from awp_landscape.report.sweep import sweep_section
from figures.html import Document, Section, markdown_figures, render_html, render_markdown


def build_document(res: Results, *, title: str = "AWP: what this run measured") -> Document:
    """The report's document: the outcome, then a section for every kind of result found.

    A replicated demo's outcome is its paired verdicts over seeds; the first seed is then shown
    in detail, its single-seed statements labelled as such. A sweep adds its own section.
    """
    doc = Document(title=title)
    if res.demo_config:
        doc.intro.append(intro(res.demo_config, res.seeds))
    single = outcome(measurements(res)) if res.runs or res["gap"] or res["flatness"] else []
    story = story_section(res)
    if story is not None:
        doc.sections.append(story)
    if res.replicates:
        if len(res.seeds) >= MIN_SEEDS:
            doc.sections.append(replicates_section(res.replicates))
        if single:
            seed = res.seeds[0] if res.seeds else 0
            doc.sections.append(
                Section(
                    f"Seed {seed} in detail",
                    paragraphs=[
                        f"The sections below show seed {seed} alone. Its statements compare "
                        "two single runs and are not claims over seeds:",
                        *single,
                    ],
                )
            )
    elif single:
        doc.sections.append(
            Section("Outcome of this run", paragraphs=[f"NOTE: {s}" for s in single])
        )
    if res.sweep:
        doc.sections.append(sweep_section(res.sweep, res.figures))
    if not doc.sections:
        doc.sections.append(Section("Outcome", paragraphs=["Not enough results for an outcome."]))
    absent = []
    for part in (p for measure in MEASURES for p in measure.sections()):
        if part.present(res):
            doc.sections.append(drawn(part.draw, res, part.title, part.reads))
        else:
            absent.append((part.title, part.reads))
    if absent and (res.demo_config or res.seeds):
        doc.sections.append(not_measured(res, absent))
    return doc


def write_report(
    paths: Sequence[str | Path], out: str | Path, *, title: str | None = None
) -> tuple[Path, Path]:
    """Collect, build and write ``out`` (HTML, figures embedded) and the markdown summary beside
    it, whose figures are PNGs in ``<stem>_files/`` linked by relative paths."""
    out = Path(out)
    res = collect(paths)
    md, folder = out.with_suffix(".md"), f"{out.stem}_files"
    with exclusive_output(out, cleans=[out, md]):
        doc = build_document(res, **({"title": title} if title else {}))
        html_path = atomic_write_text(out, render_html(doc))
        figures = {out.parent / rel: png for rel, png in markdown_figures(doc, folder).items()}
        (out.parent / folder).mkdir(parents=True, exist_ok=True)
        atomic_write_set({**figures, md: render_markdown(doc, figure_folder=folder)})
        for stale in set((out.parent / folder).glob("fig*.png")) - set(figures):
            stale.unlink()  # a figure of an earlier report that this one no longer has
    return html_path, md

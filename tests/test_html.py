import base64

from figures.html import Document, FigureBlock, Section, Table, fmt, render_html, render_markdown
from figures.style import new_figure
from tests.browser import open_in_chromium, require_browser


def png_figure() -> FigureBlock:
    fig, ax = new_figure()
    ax.plot([0, 1, 2], [1, 0, 1])
    return FigureBlock.from_figure(fig, caption="a curve", alt="curve")


def doc_with(figs) -> Document:
    return Document(
        title="Test report",
        intro=["Hello.", "NOTE: something to flag"],
        sections=[
            Section(
                "Numbers",
                paragraphs=["Some text <b>escaped</b>."],
                tables=[
                    Table(
                        [
                            {"method": "AT", "acc": 0.51234},
                            {"method": "AT-AWP", "acc": float("nan")},
                        ],
                        caption="accuracies",
                    )
                ],
                figures=figs,
            )
        ],
    )


def test_render_is_self_contained_and_escaped():
    page = render_html(doc_with([png_figure()]))
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "&lt;b&gt;escaped&lt;/b&gt;" in page
    b64 = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(b64).startswith(b"\x89PNG")
    md = render_markdown(doc_with([png_figure()]))
    assert "| method | acc |" in md and "| AT | 0.5123 |" in md and "| AT-AWP | – |" in md
    assert fmt(True) == "yes" and fmt(None) == "–"


def test_every_image_decodes_in_chromium(tmp_path):
    require_browser()
    good = tmp_path / "good.html"
    good.write_text(render_html(doc_with([png_figure(), png_figure()])), encoding="utf-8")
    check = open_in_chromium(good)
    assert check.title == "Test report"
    assert check.images == 2 and check.broken == [] and check.console_errors == []
    assert "accuracies" in check.text


def test_the_browser_check_catches_a_broken_image(tmp_path):
    require_browser()
    bad = tmp_path / "bad.html"
    broken = FigureBlock(b"\x89PNG not really", caption="broken", alt="broken")
    bad.write_text(render_html(doc_with([png_figure(), broken])), encoding="utf-8")
    check = open_in_chromium(bad)
    assert check.broken == ["broken"]


def _planes(tmp_path):
    """Two 2-D landscapes and two trajectory planes (AT, AT-AWP), as the analysis folder holds
    them; AT-AWP's values are lower, so one z scale must span both."""
    import numpy as np

    from landscape.grid import make_grid
    from landscape.storage import new_surface, write_surface

    x, y = np.linspace(-1, 1, 7), np.linspace(-0.5, 0.5, 5)
    bowl = np.add.outer(y**2, x**2)
    for kind, folder in (("2d", "landscape"), ("trajectory", "trajectory")):
        for label, scale in (("AT", 2.0), ("AT-AWP", 1.0)):
            attrs = {"label": label}
            if kind == "trajectory":
                path = [{"epoch": e} for e in (5, 10, 15)]
                attrs["trajectory"] = {
                    "coords": [[-0.8, 0.3], [-0.4, 0.1], [0.0, 0.0]],
                    "path": path,
                    "explained_variance_ratio": [0.8, 0.1],
                    "scale": 1.0,
                    "in_plane": [1.0, 1.0, 1.0],
                }
            s = new_surface(make_grid(kind, x, y), ["test_loss", "test_adv_loss"], attrs)
            s.values["test_loss"][...] = scale * bowl
            s.values["test_adv_loss"][...] = scale * bowl + 1
            s.computed[...] = True
            write_surface(tmp_path / "analysis" / folder / f"{label}.h5", s)
    return tmp_path


def test_interactive_surfaces_share_one_z_scale(tmp_path):
    import json

    import pytest

    pytest.importorskip("plotly", reason="pip install -e '.[viz]' brings plotly")
    from awp_landscape.report import build_document, collect

    doc = build_document(collect([_planes(tmp_path)]))
    (section,) = [s for s in doc.sections if s.title == "Surfaces in 3-D"]
    # a figure per kind of plane and metric, each with its static image
    assert len(section.interactive) == 4 and all(b.static.png for b in section.interactive)
    for block in section.interactive:
        spec = json.loads(block.spec)
        surfaces = [t for t in spec["data"] if t["type"] == "surface"]
        assert [t["name"] for t in surfaces] == ["AT", "AT-AWP"]
        assert len({(t["cmin"], t["cmax"]) for t in surfaces}) == 1
        scenes = [v["zaxis"]["range"] for k, v in spec["layout"].items() if k.startswith("scene")]
        assert len(scenes) == 2 and scenes[0] == scenes[1] == [
            surfaces[0]["cmin"],
            surfaces[0]["cmax"],
        ]
        # the range spans both: AT's maximum is twice AT-AWP's
        assert surfaces[0]["cmax"] == pytest.approx(max(max(r) for r in surfaces[0]["z"]))
    paths = [
        t
        for b in section.interactive
        for t in json.loads(b.spec)["data"]
        if t["type"] == "scatter3d"
    ]
    assert len(paths) == 4  # the trajectory path on each trajectory panel
    md = render_markdown(doc)
    assert md.count("(rotatable in the HTML report)") == 4


def test_every_interactive_plot_renders_offline_in_chromium(tmp_path):
    import pytest

    require_browser()
    pytest.importorskip("plotly", reason="pip install -e '.[viz]' brings plotly")
    from awp_landscape.report import write_report

    html_path, _ = write_report([_planes(tmp_path)], tmp_path / "report.html")
    page = html_path.read_text(encoding="utf-8")
    assert page.count('<script type="text/javascript">') == 1  # plotly.js, embedded once
    assert "<script src" not in page and "<link" not in page
    check = open_in_chromium(html_path)
    assert check.console_errors == []
    assert len(check.plots) == 4
    for plot in check.plots:
        assert plot["drawn"] and plot["canvases"] >= 1 and plot["svgs"] >= 1, plot
    assert check.broken == [] and check.images >= 4  # the static images beside
    assert all(u.startswith("data:") for u in check.fetched), check.fetched  # nothing fetched


def _md_rows(md: str) -> list[list[str]]:
    """Every markdown table as its rows of cells (split on unescaped pipes)."""
    import re

    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_tables_keep_their_columns_and_figures_are_linked(tmp_path):
    from awp_landscape.report import write_report

    doc = doc_with([png_figure()])
    doc.sections[0].tables.append(
        Table([{"measure": "mean |w| of | the layer", "value": 1.5}], caption="pipes")
    )
    md = render_markdown(doc, figure_folder="report_files")
    for table in _md_rows(md):
        assert len({len(r) for r in table}) == 1, table
    assert "mean \\|w\\| of \\| the layer" in md
    assert "![" in md and "(report_files/fig01_" in md
    # write_report writes the PNGs beside report.md, and every link resolves
    _, md_path = write_report([_planes(tmp_path)], tmp_path / "report.html")
    text = md_path.read_text()
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert links and all((md_path.parent / link).is_file() for link in links)
    for table in _md_rows(text):
        assert len({len(r) for r in table}) == 1, table

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

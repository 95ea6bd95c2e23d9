"""Open an HTML file in headless Chromium (Debian's chromium + chromedriver) and inspect it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@dataclass
class PageCheck:
    images: int
    broken: list[str]
    console_errors: list[str]
    title: str
    text: str
    plots: list[dict]  # per .plotly-plot element: canvases, svgs, drawn (plotly laid it out)
    fetched: list[str]  # every resource the page loaded (offline: data: URIs only)


def require_browser() -> None:
    """Skip with the reason when Chromium, ChromeDriver or selenium is missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed "
            "(make test installs them: scripts/ensure_chromium.sh)"
        )
    pytest.importorskip("selenium", reason="pip install -e '.[dev]' brings selenium")


def open_in_chromium(path: Path) -> PageCheck:
    """Load ``path`` and report decoded images and console errors."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # WebGL (plotly's 3-D scenes) on the software renderer, for this trusted local file
        "--enable-unsafe-swiftshader",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(path).resolve().as_uri())
        images = driver.execute_script("""
            return Array.from(document.images).map(img => ({
                alt: img.alt, ok: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0}));
        """)
        plots = driver.execute_script("""
            return Array.from(document.querySelectorAll('.plotly-plot')).map(el => ({
                id: el.id, canvases: el.querySelectorAll('canvas').length,
                svgs: el.querySelectorAll('svg').length, drawn: !!el._fullLayout}));
        """)
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        logs = driver.get_log("browser")
        return PageCheck(
            images=len(images),
            broken=[i["alt"] for i in images if not i["ok"]],
            console_errors=[e["message"] for e in logs if e["level"] in ("SEVERE", "ERROR")],
            title=driver.title,
            text=driver.find_element("tag name", "body").text,
            plots=plots,
            fetched=fetched,
        )
    finally:
        driver.quit()


def first_section(path: Path) -> dict:
    """What the first section (the first h2 up to the next) of ``path`` shows in Chromium: its
    title, the decoded images in it, and the header cells of each of its tables."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(Path(path).resolve().as_uri())
        return driver.execute_script("""
            const h = document.querySelector('h2');
            const out = {title: h ? h.textContent : null, images: 0, tables: []};
            for (let e = h && h.nextElementSibling; e && e.tagName !== 'H2';
                 e = e.nextElementSibling) {
                for (const img of [e, ...e.querySelectorAll('*')]) {
                    if (img.tagName === 'IMG' && img.complete && img.naturalWidth > 0) out.images++;
                }
                for (const t of [e, ...e.querySelectorAll('table')]) {
                    if (t.tagName === 'TABLE') {
                        const cells = Array.from(t.querySelectorAll('th'));
                        out.tables.push(cells.map(c => c.textContent));
                    }
                }
            }
            return out;
        """)
    finally:
        driver.quit()

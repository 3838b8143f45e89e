"""report.html as a person sees it, in headless Chromium at 1366 and 1920 px: a screenshot is taken,
the first divergence (or the clean verdict) and its cause sit in the first viewport without
scrolling, and nothing overflows horizontally.  Skips, naming chromium, when it is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report.browser import find_chromium, layout, screenshot

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_chromium() is None,
                                 reason="chromium not installed (apt-get install -y chromium) or $CHROMIUM unset")]

WIDTHS = (1366, 1920)
HEIGHT = 900
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """report.html of a named fault (no-shift) and of the clean pipelines, from real runs."""
    from harness.api import compare
    from harness.report.render import write_report

    out = tmp_path_factory.mktemp("browser")
    fault = compare(faults=["no-shift"], samples=2, ddp_world_size=0)
    clean = compare(samples=2, ddp_world_size=0)
    assert fault.verdict == "diverged" and clean.verdict == "pass"
    return {"fault": write_report(fault, out / "fault")["html"], "clean": write_report(clean, out / "clean")["html"]}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", ["fault", "clean"])
def test_first_divergence_and_cause_visible_without_scrolling(pages, kind, width, tmp_path):
    png = screenshot(pages[kind], tmp_path / f"{kind}-{width}.png", width=width, height=HEIGHT)
    assert png.read_bytes().startswith(PNG_MAGIC)

    m = layout(pages[kind], width=width, height=HEIGHT)
    assert m["innerWidth"] == width
    # no horizontal overflow: the page is no wider than the window, and no element sticks out
    assert m["scrollWidth"] <= m["innerWidth"], m
    assert m["widestRight"] <= m["innerWidth"] + 0.5, m
    for key in ("verdict", "firstDivergence", "firstCause"):
        box = m[key]
        assert box is not None, f"#{key} missing from the page"
        assert 0 <= box["top"] and box["bottom"] <= m["innerHeight"], (key, box, m["innerHeight"])
        assert 0 <= box["left"] and box["right"] <= m["innerWidth"], (key, box)
    cause = " ".join(m["firstCause"]["text"].split())
    if kind == "fault":
        assert "no next-token shift" in cause
        assert "loss.audio_ce_common" in m["firstDivergence"]["text"]
    else:
        assert "No undeclared divergence" in cause

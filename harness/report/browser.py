"""Look at a report page the way a person does: headless Chromium, no DevTools protocol.

`screenshot` renders `report.html` at a window size into a PNG.  `layout` measures, in a copy of the
page with a small script added, where the summary's first divergence (``#first-divergence``) and its
cause (``#first-cause``) sit and whether anything overflows horizontally; the script writes its
measurements into the DOM, ``--dump-dom`` prints it and the result is parsed here.  The report
itself never carries a script.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); `find_chromium` returns None without it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# Flags for a quiet, offline, sandbox-free headless run (containers run as root).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
PROBE_ID = "higgs-diff-layout-probe"
TIMEOUT_S = 120

_PROBE_SCRIPT = """
<script>
window.addEventListener("load", function () {
  function box(id) {
    var el = document.getElementById(id);
    if (!el) { return null; }
    var r = el.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, text: el.textContent};
  }
  var widest = 0, widestTag = "";
  document.querySelectorAll("body *").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.right > widest) { widest = r.right; widestTag = el.tagName + (el.id ? "#" + el.id : ""); }
  });
  var out = {innerWidth: window.innerWidth, innerHeight: window.innerHeight,
             scrollWidth: document.documentElement.scrollWidth, bodyScrollWidth: document.body.scrollWidth,
             widestRight: widest, widestElement: widestTag,
             firstDivergence: box("first-divergence"), firstCause: box("first-cause"), verdict: box("verdict")};
  var pre = document.createElement("pre");
  pre.id = "%s";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
""" % PROBE_ID


class BrowserError(RuntimeError):
    """Chromium failed or printed nothing to parse; the message holds its command and stderr tail."""


def find_chromium() -> str | None:
    """Path of the chromium executable (``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH)."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], *, what: str) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise BrowserError("chromium not found (apt-get install -y chromium, or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="higgs-diff-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise BrowserError(f"{what}: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def screenshot(page: Path, png: Path, *, width: int, height: int) -> Path:
    """Render `page` (an HTML file) in a `width` x `height` window into `png` (the first viewport)."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    _run([f"--window-size={width},{height}", f"--screenshot={png}", Path(page).resolve().as_uri()],
         what="screenshot")
    if not png.is_file() or png.stat().st_size == 0:
        raise BrowserError(f"screenshot: chromium wrote no {png}")
    return png


def layout(page: Path, *, width: int, height: int) -> dict[str, Any]:
    """Measurements of `page` in a `width` x `height` window (module docstring): viewport size,
    ``scrollWidth``, the widest element's right edge, and the bounding boxes (CSS px, relative to the
    first viewport) and text of ``#first-divergence``, ``#first-cause`` and ``#verdict`` (None if absent)."""
    text = Path(page).read_text(encoding="utf-8")
    if "</body>" not in text:
        raise BrowserError(f"layout: {page} has no </body> to add the probe before")
    with tempfile.TemporaryDirectory(prefix="higgs-diff-probe-") as tmp:
        copy = Path(tmp) / "probe.html"
        copy.write_text(text.replace("</body>", _PROBE_SCRIPT + "</body>", 1), encoding="utf-8")
        proc = _run([f"--window-size={width},{height}", "--dump-dom", copy.as_uri()], what="layout")
    m = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', proc.stdout, flags=re.S)
    if m is None:
        raise BrowserError(f"layout: the probe wrote nothing into the DOM of {page} (stderr: {proc.stderr[-1000:]})")
    return json.loads(html.unescape(m.group(1)))

"""Driving the OHIF viewer in headless Debian Chromium with Playwright, and reading what it shows.

Assertions read the viewer's own state (``window.services``) and the pixels of the viewport
element, never toasts or dialogs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from tests.peers import REPO_ROOT, free_port, port_open, stop_process, wait_for

CHROMIUM = Path("/usr/bin/chromium")
OHIF_DIST = REPO_ROOT / ".cache" / "ohif" / "package" / "dist"
VIEWER_SERVER = REPO_ROOT / "deploy" / "viewer" / "server.py"
ARTIFACTS = Path(os.environ.get("PACS_AI_NODE_ARTIFACTS", REPO_ROOT / "test-artifacts"))

# As root, with no GPU and a closed network: no sandbox, software WebGL, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_ACTIVE_VIEWPORT = """() => {
  const s = window.services;
  if (!s) { return null; }
  return s.cornerstoneViewportService.getCornerstoneViewport(
    s.viewportGridService.getActiveViewportId());
}"""


@contextmanager
def viewer_server(dicomweb_root: str, port: int | None = None) -> Iterator[str]:
    """Run ``deploy/viewer/server.py`` in front of ``dicomweb_root``; yield the viewer's URL."""
    if not (OHIF_DIST / "index.html").is_file():
        raise RuntimeError(f"no OHIF build in {OHIF_DIST}: run `make viewer-deps` (make test does)")
    port = port or free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(VIEWER_SERVER),
            "--dist",
            str(OHIF_DIST),
            "--dicomweb",
            dicomweb_root,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), timeout_s=30, what="the viewer server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def open_study(browser: Browser, viewer_url: str, study_uid: str) -> Page:
    """Open a study in the basic viewer, dismiss the first-run tour, wait for the first image."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{viewer_url}/viewer?StudyInstanceUIDs={study_uid}")
    page.get_by_text("Skip all").click(timeout=60_000)
    page.wait_for_function(
        f"() => {{ const vp = ({_ACTIVE_VIEWPORT})(); return vp && vp.getImageIds().length > 0; }}",
        timeout=60_000,
    )
    return page


def show_instance(page: Page, sop_instance_uid: str) -> None:
    """Scroll the active viewport to the slice of ``sop_instance_uid`` and wait for it."""
    index = page.evaluate(
        f"""(sop) => {{
          const vp = ({_ACTIVE_VIEWPORT})();
          const k = vp.getImageIds().findIndex(id => id.includes('/instances/' + sop + '/'));
          if (k >= 0) {{ vp.setImageIdIndex(k); }}
          return k;
        }}""",
        sop_instance_uid,
    )
    if index < 0:
        raise AssertionError("the viewport's stack does not hold that instance")
    page.wait_for_function(
        f"(k) => ({_ACTIVE_VIEWPORT})().getCurrentImageIdIndex() === k", arg=index
    )
    page.wait_for_timeout(1500)  # let the overlay render on the new slice


def segmentation_labels(page: Page) -> list[str]:
    """Labels of the segmentations loaded in OHIF's segmentation service."""
    labels: list[str] = page.evaluate(
        "() => window.services.segmentationService.getSegmentations().map(s => s.label)"
    )
    return labels


def viewport_pixels(page: Page, artifact: str | None = None) -> npt.NDArray[np.uint8]:
    """The active viewport element as RGB pixels; saved under the artefacts folder if named."""
    png = page.locator(".cornerstone-viewport-element").first.screenshot()
    if artifact:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / artifact).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def tinted(pixels: npt.NDArray[np.uint8], rgb: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    """Pixels tinted towards ``rgb``'s dominant channel (grey CT has R = G = B)."""
    values = pixels.astype(np.int16)
    dominant = int(np.argmax(rgb))
    others = [c for c in range(3) if c != dominant]
    return (values[..., dominant] > values[..., others[0]] + 15) & (
        values[..., dominant] > values[..., others[1]] + 15
    )


def world_to_canvas(page: Page, points: list[list[float]]) -> list[tuple[float, float]]:
    """Canvas coordinates (CSS pixels) of patient-space points (mm, LPS) in the active viewport."""
    canvas: list[list[float]] = page.evaluate(
        f"(points) => {{ const vp = ({_ACTIVE_VIEWPORT})(); "
        "return points.map(p => Array.from(vp.worldToCanvas(p))); }",
        points,
    )
    return [(float(x), float(y)) for x, y in canvas]

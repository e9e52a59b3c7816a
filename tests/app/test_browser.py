"""The app in a real headless chromium (Debian's, driven by Playwright): load, upload a photo,
see its pose, drag a joint and hide one, generate, and have oversized uploads and a pixel bomb
refused with the app's own message.

Set POSEGUIDE_APP_SCREENSHOT=path.png to save a screenshot of the page after generation
(docs/images/app.png is made that way).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from PIL import Image

from poseguide.app import AppLimits, launch

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches for the network (closed here) at start-up.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LIMITS = AppLimits(max_upload_bytes=2 * 2**20, max_pixels=600_000)
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.browser
gr = pytest.importorskip("gradio", reason="the app extra is missing: pip install -e '.[app]'")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def url(app_config) -> Iterator[str]:
    port = free_port()
    demo = launch(app_config, "127.0.0.1", port, limits=LIMITS, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _status_has(page, text: str) -> None:
    page.wait_for_function(
        "t => document.querySelector('#pg-status').innerText.includes(t)", arg=text,
        timeout=TIMEOUT_MS,
    )  # fmt: skip


def _upload(page, path: Path) -> None:
    """Click the upload button and choose ``path``, as a person does."""
    with page.expect_file_chooser(timeout=TIMEOUT_MS) as chooser:
        page.click("#pg-upload")
    chooser.value.set_files(path)


def _images(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Over the pixel limit (small file), a pixel bomb (100 MB decoded, ~100 KB on disk) and
    over the byte limit (noise compresses badly)."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1000, 800), (90, 120, 160)).save(wide)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (10_000, 10_000), 128).save(bomb, optimize=True)
    heavy = tmp_path / "heavy.png"
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    Image.fromarray(noise).save(heavy)
    assert LIMITS.max_upload_bytes < heavy.stat().st_size < LIMITS.transport_bytes
    return wide, bomb, heavy


def _save_screenshot(page, path: Path) -> None:
    """The whole page as a 256-colour PNG (a third of the size of the browser's own)."""
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def test_app_in_a_browser(browser, url: str, astronaut: Path, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#pg-editor circle[data-j='16']", timeout=TIMEOUT_MS)
    _status_has(page, "Default pose")
    pose = page.locator("#pg-pose img")
    default_src = pose.get_attribute("src")

    # A photo: its pose is estimated, drawn in the editor and rendered for ControlNet.
    _upload(page, astronaut)
    _status_has(page, "astronaut.png: pose estimated")
    page.wait_for_function(
        "s => document.querySelector('#pg-pose img').src !== s", arg=default_src,
        timeout=TIMEOUT_MS,
    )  # fmt: skip
    nose = page.locator("#pg-editor circle[data-j='0']")
    x, y = float(nose.get_attribute("cx")), float(nose.get_attribute("cy"))
    assert abs(x - 221) < 20 and abs(y - 121) < 20  # the astronaut's nose, in photo pixels
    assert "pg-hidden" in page.locator("#pg-editor circle[data-j='15']").get_attribute("class")
    assert page.locator("#pg-editor .pg-editor image").count() == 1  # the photo under the joints
    # How many joints the estimator finds (11 or 12: the left ear is borderline) is the
    # estimator's business; the editor must show exactly those, and edits must count from them.
    status = page.locator("#pg-status").inner_text()
    shown = int(re.search(r"1 person, (\d+) of 17 joints shown", status).group(1))
    assert page.locator("#pg-editor circle.pg-joint:not(.pg-hidden)").count() == shown, status

    # Drag the nose 40 screen pixels up, onto the forehead where no other joint is (to the
    # right it lands on the left ear, when that is found, and the double click below would hit
    # the ear): the editor sends the new keypoints.
    box = nose.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx, cy - 40, steps=4)
    page.mouse.up()
    _status_has(page, f"Edited pose: 1 person, {shown} of 17 joints")
    assert float(nose.get_attribute("cy")) < y - 20
    nose.dblclick()  # hides the joint
    _status_has(page, f"Edited pose: 1 person, {shown - 1} of 17 joints")
    assert "pg-hidden" in nose.get_attribute("class")
    nose.dblclick()  # and shows it again
    _status_has(page, f"Edited pose: 1 person, {shown} of 17 joints")

    # Generate: an image appears beside the pose.
    page.click("#pg-generate")
    page.wait_for_selector("#pg-gallery img", timeout=TIMEOUT_MS)
    _status_has(page, "Generated 1 image (64x64, seed 0, 2 steps")
    if shot := os.environ.get("POSEGUIDE_APP_SCREENSHOT"):
        _save_screenshot(page, Path(shot))

    # The upload button keeps its file: choosing another kind reads it again.
    page.get_by_label("skeleton").check()
    _status_has(page, "astronaut.png: used as a skeleton image (512x512)")

    # Refused uploads: the app's own message in the status line, from the file's size or header.
    wide, bomb, heavy = _images(tmp_path)
    _upload(page, heavy)
    _status_has(page, "heavy.png is 2.3 MB, over the upload limit of 2.0 MB")
    _upload(page, wide)
    _status_has(page, "wide.png is 1000x800 = 800,000 pixels, over the limit of 600,000")
    _upload(page, bomb)
    _status_has(page, "bomb.png is 10000x10000 = 100,000,000 pixels, over the limit of 600,000")
    assert page.locator("#pg-gallery img").count() >= 1  # the page is still there
    page.close()

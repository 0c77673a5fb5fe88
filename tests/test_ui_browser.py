"""mudi ui in a real headless Chromium (Debian's package, driven by Playwright with the system
browser; no browser download): the whole workflow on the toy world, asserting on what the page shows.

Without /usr/bin/chromium (or $MUDI_CHROMIUM) these tests skip, except under CI=true, where
they fail. ``MUDI_UI_SCREENSHOTS=DIR`` also saves a PNG of each tab there (the README's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed: pip install -e '.[ui]'")
CHROMIUM = os.environ.get("MUDI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: no system chromium at {CHROMIUM}; .ci/run installs Debian's chromium package",
                    pytrace=False)
    pytest.skip(f"no system chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

SHOTS = os.environ.get("MUDI_UI_SCREENSHOTS", "")
TIMEOUT = 400_000  # ms: training on a shared 2-core CPU (other jobs may load it)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on the toy world, served from this process on a free local port."""
    from mudi.ui.app import CSS, build_app
    from mudi.ui.config import UIConfig

    root = tmp_path_factory.mktemp("ui")
    config = UIConfig(workdir=str(root / "work"), device="cpu", port=_free_port(), no_browser=True)
    demo, ctx = build_app(config)
    demo.queue().launch(server_name="127.0.0.1", server_port=config.port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(ctx.ws.root)], css=CSS, show_error=False)
    yield f"http://127.0.0.1:{config.port}/", ctx, root
    ctx.worker.stop()
    ctx.worker.join(60)
    demo.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 1000})
        context.set_default_timeout(TIMEOUT)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT)
        sync_api.expect.set_options(timeout=TIMEOUT)
        pg.goto(server[0])
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def photos(server):
    """Toy photos and exact masks as a user would have them on disk (nothing in the workdir)."""
    from mudi.toy import make_subject_set

    return make_subject_set(server[2] / "photos", n_photos=3)


def _shot(page, name: str) -> None:
    """A small PNG of the page for the README (only with MUDI_UI_SCREENSHOTS=DIR)."""
    if SHOTS:
        import io

        from PIL import Image

        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.wait_for_function("Array.from(document.images).filter(i => i.offsetParent !== null)"
                               ".every(i => i.complete && i.naturalWidth > 0)")  # no half-loaded gallery
        page.wait_for_timeout(500)
        img = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        img = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.LANCZOS).quantize(colors=64)
        img.save(Path(SHOTS) / f"ui_{name}.png", optimize=True)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()
    page.keyboard.press("Escape")


def _status(page, elem_id: str, text: str) -> str:
    loc = page.locator(f"#{elem_id}")
    sync_api.expect(loc).to_contain_text(text)
    return loc.inner_text()


def test_a_mistake_is_a_message_in_the_page(page, server):
    page.fill("#subject-0-id input, #subject-0-id textarea", "wip")
    page.locator("#subjects-build").click()
    text = _status(page, "subjects-status", "Error:")
    assert "give its class" in text and "Traceback" not in page.content()
    assert not (server[1].ws.root / "subjects").exists()


def test_whole_workflow_on_the_toy_world(page, server, photos, photo_class_set):
    ctx, root = server[1], server[2]
    # 1. subjects from uploads (photo b02 gets an uploaded mask: the fix-a-mask path)
    for i, (ident, key) in enumerate([("wip", "a"), ("jam", "b")]):
        page.fill(f"#subject-{i}-id textarea, #subject-{i}-id input", ident)
        page.fill(f"#subject-{i}-class textarea, #subject-{i}-class input", "circle")
        page.locator(f"#subject-{i}-photos input[type=file]").set_input_files(
            sorted(str(p) for p in photos.glob(f"{key}0[0-9].png")))
    page.get_by_text("fix masks: upload masks or type boxes").click()
    page.locator("#subject-masks input[type=file]").set_input_files([str(photos / "mask_b02.png")])
    page.fill("#subjects-name input, #subjects-name textarea", "toys")
    page.locator("#subjects-build").click()
    assert "6 photos of wip circle, jam circle; 0 failed" in _status(page, "subjects-status", "subject set toys")
    sync_api.expect(page.locator("#subjects-sheet img")).to_be_visible()
    # draw a box on a photo with the mouse and build again with it (the fix-a-box path)
    _choose(page, "subjects-box-photo", "a01.png")
    handle = page.locator("#subjects-box-canvas .mudi-box .mudi-handle")
    sync_api.expect(handle).to_be_visible()
    hb = handle.bounding_box()
    page.mouse.move(hb["x"] + 6, hb["y"] + 6)
    page.mouse.down()
    page.mouse.move(hb["x"] + 30, hb["y"] + 30, steps=4)
    page.mouse.up()
    page.locator("#subjects-box-use").click()
    sync_api.expect(page.locator("#subject-boxes textarea")).to_have_value(
        re.compile(r'"a01.png": \[\d+, \d+, \d+, \d+\]'))
    _status(page, "subjects-status", "box of a01.png set")
    # click one of the segmenter's candidates for another photo (the choose-a-candidate path)
    _choose(page, "subjects-box-photo", "a00.png")
    page.locator("#subjects-candidates-show").click()
    _status(page, "subjects-status", "click the best mask of a00.png")
    page.locator("#subjects-candidates .thumbnail-item").first.click()
    _status(page, "subjects-status", "candidate 1 is now the mask of a00.png")
    page.locator("#subjects-replace input").check()
    page.locator("#subjects-build").click()
    _status(page, "subjects-status", "subject set toys: 6 photos")
    _shot(page, "subjects")
    report = json.loads((ctx.ws.root / "subjects" / "toys" / "prepare.json").read_text())
    methods = {Path(p["photo"]).name: p["method"] for p in report["photos"]}
    assert (methods["a01.png"], methods["b02.png"], methods["b00.png"]) == ("user box", "mask file", "detected")
    assert methods["a00.png"] == "mask file"  # the chosen candidate
    # 2. composites
    _tab(page, "2. Compose")
    _choose(page, "compose-set", "toys")
    page.locator("#compose-run").click()
    _status(page, "compose-status", "8 examples")
    assert page.locator("#compose-gallery img").count() >= 1
    _shot(page, "compose")
    # 3. train a few steps in the background, with prior preservation from a class-set folder on disk
    _tab(page, "3. Train")
    _choose(page, "train-set", "toys")
    page.fill("#train-steps input", "4")
    page.locator("#train-reg").get_by_text("prior preservation").click()
    _prior_folder(page, str(photos))  # not a class set: a message in the page, nothing started
    page.locator("#train-start").click()
    assert "line 1 must be" in _status(page, "train-status", "Error: class-set folder")
    assert not (ctx.ws.root / "runs").exists()
    _prior_folder(page, str(photo_class_set(root / "classes", "circle", photos)))
    page.locator("#train-start").click()
    _status(page, "train-status", "training run1: 4 steps")
    _status(page, "train-progress", "finished, step 4 / 4")
    sync_api.expect(page.locator("#train-validation img").first).to_be_visible()
    _shot(page, "train")
    saved = (ctx.ws.root / "runs" / "run1" / "config.toml").read_text()
    assert 'reg = "prior"' in saved and f'prior_dir = "{root / "classes"}"' in saved
    # 4. generate with a dragged layout
    _tab(page, "4. Generate")
    _choose(page, "gen-run", "run1")
    box = page.locator("#gen-canvas .mudi-box[data-key=a]")
    sync_api.expect(box).to_be_visible()
    page.locator("#gen-chip-0").click()
    sync_api.expect(page.locator("#gen-prompt textarea")).to_have_value("a photo of a wip circle")
    page.fill("#gen-prompt textarea", "a photo of a wip circle and a jam circle")
    start = box.bounding_box()
    page.mouse.move(start["x"] + 20, start["y"] + 20)
    page.mouse.down()
    page.mouse.move(start["x"] + 20, start["y"] - 40, steps=5)
    page.mouse.up()
    moved = box.bounding_box()
    assert abs((start["y"] - moved["y"]) - 60) <= 2  # clamped at the canvas top, never outside
    page.locator("#gen-run-button").click()
    text = _status(page, "gen-status", "2 images in run1")
    a_box = [int(v) for v in re.search(r"dragged boxes a \[([^\]]+)\]", text).group(1).split(",")]
    assert a_box[1] == round(json.loads(_default_layout())["boxes"]["a"][1]) - 60
    sync_api.expect(page.locator("#gen-init img")).to_be_visible()
    assert page.locator("#gen-images img").count() >= 2
    _shot(page, "generate")
    # 5. Detect-and-Compare
    _tab(page, "5. Evaluate")
    _choose(page, "eval-gens", "run1")
    page.locator("#eval-run").click()
    _status(page, "eval-status", "evaluated 1 folder")
    summary = page.locator("#eval-summary").inner_text()
    assert "mean D&C" in summary and re.search(r"run1\s+2\s+-?\d\.\d{3}\s+\d+ %", summary)
    assert page.locator("#eval-thumbs img").count() == 2
    _shot(page, "evaluate")


def test_training_survives_the_page_and_stops_and_resumes(page, server, monkeypatch):
    """A run started in one tab keeps going after the tab closes; another tab stops and resumes it."""
    import threading

    worker, gate = server[1].worker, threading.Event()
    on_step = worker._on_step

    def held(step, row):  # the run waits after its step 2 until the test has pressed Stop
        if step == 2:
            gate.wait(TIMEOUT / 1000)
        return on_step(step, row)

    monkeypatch.setattr(worker, "_on_step", held)
    _tab(page, "3. Train")
    _choose(page, "train-set", "toys")
    page.fill("#train-name input, #train-name textarea", "run2")
    page.fill("#train-steps input", "6")
    page.locator("#train-start").click()
    _status(page, "train-status", "training run2: 6 steps")
    page.close()
    other = page.context.new_page()
    other.goto(server[0])
    _tab(other, "3. Train")
    _status(other, "train-progress", "run2: running, step 1 / 6")
    other.locator("#train-stop").click()
    _status(other, "train-status", "stopping after the current step")
    gate.set()
    _status(other, "train-progress", "stopped after step 2 of 6")
    monkeypatch.undo()
    assert not (server[1].ws.root / "runs" / "run2" / "pytorch_lora_weights.safetensors").exists()
    _choose(other, "train-run", "run2")
    other.locator("#train-resume").click()
    _status(other, "train-progress", "run2: finished, step 6 / 6")
    assert (server[1].ws.root / "runs" / "run2" / "pytorch_lora_weights.safetensors").is_file()
    steps = [json.loads(x)["step"] for x in (server[1].ws.root / "runs" / "run2" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def _prior_folder(page, path: str) -> None:
    """Type a class-set folder into the Train tab's dropdown (it takes any path)."""
    box = page.locator("#train-prior-dir input")
    box.fill(path)
    box.press("Enter")
    page.keyboard.press("Escape")


def _default_layout() -> str:
    from mudi.ui.canvas import default_layout

    return default_layout({"a": "wip circle", "b": "jam circle"})

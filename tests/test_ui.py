"""mudi ui without a browser: safety checks (host/auth, uploads, names, no overwrite), page
messages instead of tracebacks, the toy preset, the canvas layout, the training worker and
the trainer's stop request (resumes bitwise)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mudi.cli import main
from mudi.errors import MudiError
from mudi.ui.config import AUTH_ENV, UIConfig
from mudi.ui.workspace import Workspace, check_name, check_upload, store_uploads


def _png(path: Path, size=(16, 16)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- serving safety


def test_local_host_by_default_and_other_hosts_need_auth(monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert UIConfig().host == "127.0.0.1"
    UIConfig().check()
    with pytest.raises(MudiError, match="--auth"):
        UIConfig(host="0.0.0.0").check()
    UIConfig(host="0.0.0.0", auth="me:secret").check()
    assert UIConfig(auth="me:secret").credentials() == ("me", "secret")
    monkeypatch.setenv(AUTH_ENV, "env:pw")
    UIConfig(host="0.0.0.0").check()
    assert UIConfig().credentials() == ("env", "pw")
    for bad in ("nopassword", ":pw", "user:"):
        with pytest.raises(MudiError, match="USER:PASSWORD"):
            UIConfig(host="0.0.0.0", auth=bad).check()
    with pytest.raises(MudiError, match="--port"):
        UIConfig(port=0).check()


def test_cli_help_and_refusals_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    out = capsys.readouterr().out
    for flag in ("--port", "--host", "--no-browser", "--workdir", "--auth", "--base", "--max-upload-mb"):
        assert flag in out
    work = tmp_path / "work"
    assert main(["ui", "--host", "0.0.0.0", "--workdir", str(work), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "--auth" in err and "Traceback" not in err
    assert not work.exists()


def test_missing_gradio_is_a_message(monkeypatch):
    import builtins

    from mudi.ui.app import require_gradio

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "gradio":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MudiError, match=r"mudi\[ui\]"):
        require_gradio()


# ----------------------------------------------------------------------------- uploads and names


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "a b", "x" * 65, "..x"])
def test_names_cannot_escape_the_workdir(name, tmp_path):
    with pytest.raises(MudiError):
        Workspace(tmp_path).path("subjects", name)


def test_workspace_names_and_fresh_names(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.path("gen", "run1") == tmp_path.resolve() / "gen" / "run1"
    (tmp_path / "gen" / "run1").mkdir(parents=True)
    (tmp_path / "gen" / "run1" / "0000.png").write_bytes(b"x")
    (tmp_path / "gen" / "empty").mkdir()
    assert ws.names("gen") == ["run1"] and ws.fresh_name("gen", "run1") == "run1-2"
    assert check_name(" ok-1.2 ") == "ok-1.2"


def test_upload_checks(tmp_path):
    good = _png(tmp_path / "a.png")
    assert check_upload(good, 10**6)[0] == "a.png"
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(MudiError, match="not an image type"):
        check_upload(text, 10**6)
    with pytest.raises(MudiError, match="upload limit"):
        check_upload(good, 10)
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG not really")
    with pytest.raises(MudiError, match="does not decode"):
        check_upload(fake, 10**6)
    bad_name = _png(tmp_path / "bad name.png")
    with pytest.raises(MudiError, match="uploaded file"):
        check_upload(bad_name, 10**6)
    # all or nothing: one bad file and nothing is copied
    dest = tmp_path / "dest"
    with pytest.raises(MudiError, match="fake.png"):
        store_uploads([good, fake], dest, 10**6, "photos")
    assert not dest.exists()
    other = tmp_path / "sub"
    other.mkdir()
    with pytest.raises(MudiError, match="two uploads are named a.png"):
        store_uploads([good, _png(other / "a.png")], dest, 10**6, "photos")
    assert [p.name for p in store_uploads([good], dest, 10**6, "photos")] == ["a.png"]


# ----------------------------------------------------------------------------- the tabs' logic


@pytest.fixture()
def ctx(tmp_path):
    from mudi.ui.app import make_context

    return make_context(UIConfig(workdir=str(tmp_path / "work"), device="cpu"))


@pytest.fixture()
def toy_photos(tmp_path):
    from mudi.toy import make_subject_set

    return make_subject_set(tmp_path / "photos", n_photos=2)


def _rows(photos: Path) -> list:
    return ["wip", "circle", sorted(map(str, photos.glob("a0?.png"))),
            "jam", "circle", sorted(map(str, photos.glob("b0?.png")))] + ["", "", None] * 3


def test_toy_preset_comes_through_the_plugin(ctx):
    from mudi.ui.presets import get_preset, preset_names

    assert "toy" in preset_names()
    assert ctx.preset.name == "toy" and (Path(ctx.preset.base) / "model_index.json").is_file()
    assert ctx.preset.evaluate["detector"] == "toy"
    with pytest.raises(MudiError, match="--base"):
        get_preset("nothing-registered")


def test_subject_set_mistakes_and_no_overwrite(ctx, toy_photos):
    from mudi.ui.subjects_tab import build_subject_set

    rows = _rows(toy_photos)
    with pytest.raises(MudiError, match="2 to 5 subjects"):
        build_subject_set(ctx, "s", rows[:3] + ["", "", None] * 4, None, "", False)
    with pytest.raises(MudiError, match="give its class"):
        build_subject_set(ctx, "s", rows[:4] + [""] + rows[5:], None, "", False)
    with pytest.raises(MudiError, match="boxes: not valid JSON"):
        build_subject_set(ctx, "s", rows, None, "{", False)
    assert not ctx.ws.root.exists() or not any(ctx.ws.root.rglob("*.png"))
    report = build_subject_set(ctx, "s", rows, None, "", False)
    assert [s.phrase for s in report.subject_set.subjects] == ["wip circle", "jam circle"]
    with pytest.raises(MudiError, match="tick 'Replace'"):
        build_subject_set(ctx, "s", rows, None, "", False)
    # a mask uploaded for one photo is used for it (the fix-a-mask path), with Replace
    report = build_subject_set(ctx, "s", rows, [str(toy_photos / "mask_a00.png")], "", True)
    methods = {Path(str(r.path)).name: r.method for r in report.results}
    assert methods["a00.png"] != methods["a01.png"]


def test_guarded_handlers_show_messages_not_tracebacks(capsys):
    from mudi.ui.common import guarded

    @guarded(2)
    def user_mistake():
        raise MudiError("choose a run <first>")

    @guarded(1)
    def bug():
        raise ZeroDivisionError("boom")

    message, rest = user_mistake()
    assert message == '<div class="mudi-error">Error: choose a run &lt;first&gt;</div>'
    assert "unexpected ZeroDivisionError: boom" in bug()
    assert "Traceback" in capsys.readouterr().err  # the details go to the server log only


def test_canvas_layout_reaches_generate(ctx):
    from mudi.generate.layout import parse_layout_json
    from mudi.ui.canvas import SIDE, default_layout, layout_for

    value = default_layout({"a": "wip circle", "b": "jam circle"})
    data = json.loads(value)
    assert data["size"] == [SIDE, SIDE] and set(data["boxes"]) == {"a", "b"}
    only_a = layout_for(value, ["a"])
    assert list(only_a["boxes"]) == ["a"]
    boxes = parse_layout_json(only_a, 64, 64, lambda k: k, "canvas")
    x0, y0, x1, y1 = data["boxes"]["a"]
    assert boxes == [("a", (round(x0 * 64 / SIDE), round(y0 * 64 / SIDE), round(x1 * 64 / SIDE),
                            round(y1 * 64 / SIDE)))]


# ----------------------------------------------------------------------------- worker and stop/resume


def test_worker_reports_progress_stop_and_errors():
    from mudi.ui.worker import FAILED, FINISHED, STOPPED, TrainWorker

    worker = TrainWorker()
    go = threading.Event()

    def fake_train(on_step):
        for step in range(1, 11):
            if step == 3:
                go.wait(10)
            if on_step(step, {"loss": 1.0 / step}):
                return

    worker.start("out", 10, 0, fake_train)
    with pytest.raises(MudiError, match="already in progress"):
        worker.start("out", 10, 0, fake_train)
    assert worker.stop()
    go.set()
    worker.join(10)
    s = worker.status()
    assert s.state == STOPPED and s.step == 3 and "Resume" in s.message
    assert [v for _, v in s.losses] == [1.0, 0.5, 1 / 3]
    worker.start("out", 10, 3, fake_train)
    worker.join(10)
    assert worker.status().state == FINISHED
    worker.start("out", 10, 0, lambda on_step: (_ for _ in ()).throw(MudiError("bad subject set")))
    worker.join(10)
    assert worker.status().state == FAILED and worker.status().message == "bad subject set"
    assert not worker.stop()


def test_a_stop_request_checkpoints_and_resumes_bitwise(tiny_models, data_dir, tmp_path):
    """on_step returning True stops after that step with a checkpoint; resume ends identical."""
    from mudi.settings import RunOptions
    from mudi.train import TrainConfig, train

    kw = dict(subjects=str(data_dir / "subjects" / "dog6_and_dog2"), base=str(tiny_models / "sd"), resolution=64,
              validate_every=-1, checkpoint_every=0, max_train_steps=4, learning_rate=1e-2, p=0.5)
    train(TrainConfig(out=str(tmp_path / "full"), **kw), RunOptions(progress=False))
    part = tmp_path / "part"
    seen = []
    train(TrainConfig(out=str(part), **kw), RunOptions(progress=False),
          on_step=lambda step, row: seen.append(step) or step == 2)
    assert seen == [1, 2] and not (part / "pytorch_lora_weights.safetensors").exists()
    assert (part / "checkpoints" / "step_000002").is_dir()
    train(TrainConfig(out=str(part), **kw), RunOptions(progress=False, resume=True))
    a, b = (load_file(str(p / "pytorch_lora_weights.safetensors")) for p in (tmp_path / "full", part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_photo_box_canvas_round_trip(ctx, toy_photos):
    from mudi.ui.canvas import SIDE, photo_box, photo_canvas
    from mudi.ui.subjects_tab import add_box, box_canvas, build_subject_set

    value = photo_canvas("/x.png", (64, 32), [8, 4, 40, 28], "a00.png")
    assert json.loads(value)["boxes"]["box"] == [8 * SIDE // 64, 4 * SIDE // 32, 40 * SIDE // 64, 28 * SIDE // 32]
    assert photo_box(value) == [8, 4, 40, 28]
    with pytest.raises(MudiError, match="build the set first"):
        box_canvas(ctx, "s", "a00.png")
    build_subject_set(ctx, "s", _rows(toy_photos), None, "", False)
    start = json.loads(box_canvas(ctx, "s", "a01.png"))
    assert start["background"].startswith("/gradio_api/file=") and start["size"] == [64, 64]
    boxes = json.loads(add_box('{"b00.png": [1, 2, 3, 4]}', "a01.png", json.dumps(start)))
    assert set(boxes) == {"b00.png", "a01.png"} and len(boxes["a01.png"]) == 4


def test_choosing_a_candidate_replaces_that_photos_mask(ctx, toy_photos, tiny_models):
    """Candidates of a photo as overlays; clicking one puts it in the mask uploads, and the next build
    (with Replace) uses exactly that mask for that photo."""
    import dataclasses

    from mudi.io import load_mask
    from mudi.subjects import SubjectSet
    from mudi.ui.subjects_tab import build_subject_set, choose_candidate, show_candidates

    with pytest.raises(MudiError, match="build the set first"):
        show_candidates(ctx, "s", "a00.png", "")
    build_subject_set(ctx, "s", _rows(toy_photos), None, "", False)
    ctx.preset = dataclasses.replace(ctx.preset, segmenter=str(tiny_models / "sam"))
    gallery = show_candidates(ctx, "s", "a01.png", '{"a01.png": [8, 8, 56, 56]}')
    assert len(gallery) == 3 and all(Path(p).is_file() and "IoU" in c for p, c in gallery)
    with pytest.raises(MudiError, match="no candidate 4"):
        choose_candidate(ctx, "s", "a01.png", 3, None)
    earlier = [str(toy_photos / "mask_a00.png"), str(toy_photos / "mask_a01.png")]
    masks = choose_candidate(ctx, "s", "a01.png", 1, earlier)
    assert masks[0] == earlier[0] and len(masks) == 2 and Path(masks[1]).name == "a01.png"
    expected = load_mask(Path(gallery[1][0]).with_name("mask_1.png"))
    report = build_subject_set(ctx, "s", _rows(toy_photos), masks, "", True)
    photo = [p for s in SubjectSet.load(report.out).subjects for p in s.photos if p.image_path.name == "a01.png"]
    assert np.array_equal(photo[0].load().mask, expected)
    # the page's click handler gets the clicked index from Gradio (by its SelectData hint)
    import gradio as gr
    from gradio.helpers import special_args

    from mudi.ui.app import build_app

    demo, _ = build_app(ctx.config, ctx)
    pick = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_pick"][0]
    args = special_args(pick, ["s", "a01.png", []], None, gr.SelectData(None, {"index": 2, "value": None}))[0]
    status, chosen = pick(*args)
    assert "candidate 3 is now the mask of a01.png" in status and Path(chosen[0]).name == "a01.png"


def test_mudi_ui_serves_on_localhost_behind_its_login(tmp_path):
    """The real command: binds 127.0.0.1, the page needs the --auth login (a wrong password fails)."""
    import http.cookiejar
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work, log = tmp_path / "work", tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop(AUTH_ENV, None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mudi.cli", "ui", "--no-browser", "--port", str(port),
                                 "--workdir", str(work), "--auth", "me:secret"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(1)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(url + "/config", timeout=10)
        assert exc.value.code == 401
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with pytest.raises(urllib.error.HTTPError):
            opener.open(url + "/login", urllib.parse.urlencode({"username": "me", "password": "bad"}).encode())
        opener.open(url + "/login", urllib.parse.urlencode({"username": "me", "password": "secret"}).encode())
        assert opener.open(url + "/config", timeout=10).status == 200
        assert f"http://127.0.0.1:{port}" in log.read_text() and work.is_dir()
    finally:
        proc.terminate()
        proc.wait(30)


# ----------------------------------------------------------------------------- prior preservation from the page


def _page_set(ctx, toy_photos) -> str:
    """The toy photos as subject set ``s`` of the work folder (both subjects of class circle)."""
    import mudi

    mudi.import_subjects(str(toy_photos), str(ctx.ws.path("subjects", "s")))
    return "s"


def test_regularization_choices_are_the_cli_fields(ctx, toy_photos, tmp_path, photo_class_set):
    """DCO by default; prior preservation with a checked class-set folder (bad folders are page
    messages, nothing written) or with the run's own class_set, made with the preset's settings."""
    from mudi.ui.priors import EXISTING, GENERATE, class_images_config, class_set_choices
    from mudi.ui.train_tab import REGULARIZATION, new_run_config

    sset = _page_set(ctx, toy_photos)
    page = [sset, "r1", "", "segmix", 2, 4, 1e-3]
    assert REGULARIZATION[0] == ("DCO", "dco")
    config = new_run_config(ctx, *page, "dco", 0)
    assert (config.reg, config.prior_dir) == ("dco", "")
    assert new_run_config(ctx, *page, "none", 0).reg == "none"
    good = photo_class_set(tmp_path / "cs", "circle", toy_photos)
    for folder, message in [("", "choose a class-set folder"), (str(tmp_path / "nowhere"), "not found"),
                            (str(toy_photos), "line 1 must be"),
                            (str(photo_class_set(tmp_path / "sq", "square", toy_photos)), "no class images for subject")]:
        with pytest.raises(MudiError, match=message):
            new_run_config(ctx, *page, "prior", 0, EXISTING, folder)
    assert not (ctx.ws.root / "runs").exists()
    config = new_run_config(ctx, *page, "prior", 0, EXISTING, str(good))
    assert (config.reg, config.prior_dir) == ("prior", str(good.resolve()))
    config = new_run_config(ctx, *page, "prior", 0, GENERATE, "ignored")
    assert (config.reg, Path(config.prior_dir)) == ("prior", ctx.ws.root / "runs" / "r1" / "class_set")
    priors = class_images_config(ctx, config, 3)
    assert (priors.n, priors.detector, priors.segmenter, priors.base) == (3, "none", "grabcut", ctx.preset.base)
    assert (priors.steps, priors.resolution, priors.out) == (20, config.resolution, config.prior_dir)
    for bad in (0, None):
        with pytest.raises(MudiError, match="images per class"):
            class_images_config(ctx, config, bad)
    # a class set already in a run folder is offered (relative to the work folder) and refused as a target
    made = photo_class_set(ctx.ws.root / "runs" / "r1" / "class_set", "circle", toy_photos)
    assert class_set_choices(ctx) == ["runs/r1/class_set"]
    with pytest.raises(MudiError, match="use an existing class-set folder"):
        new_run_config(ctx, *page, "prior", 0, GENERATE, "")
    config = new_run_config(ctx, *page, "prior", 0, EXISTING, "runs/r1/class_set")
    assert config.prior_dir == str(made.resolve())


def test_class_images_then_training_match_the_cli_run(ctx, toy_photos, tmp_path):
    """'Generate class images now': the worker makes runs/<name>/class_set with the page's base model,
    then trains with it; the run's config.toml is the one `mudi train --prior-dir` writes. A stop
    during the class images leaves nothing behind and the same name starts again."""
    from mudi.settings import read_section
    from mudi.ui.priors import GENERATE
    from mudi.ui.train_tab import new_run_config, progress_html, start_new
    from mudi.ui.worker import CLASS_IMAGES, FINISHED, STOPPED

    sset = _page_set(ctx, toy_photos)
    page = [sset, "r1", "", "segmix", 2, 4, 1e-3, "prior", 0, GENERATE, ""]
    worker, count = ctx.worker, ctx.worker.count
    seen = []

    def stop_at_first(done):  # Stop pressed once the first class image is counted
        assert not count(done)
        seen.append((worker.status().phase, done, progress_html(ctx)))
        worker.stop()
        return count(done)

    ctx.worker.count = stop_at_first
    start_new(ctx, new_run_config(ctx, *page), GENERATE, 3)
    worker.join(300)
    s = worker.status()
    assert s.state == STOPPED and "nothing was written" in s.message, s.message
    assert seen[0][:2] == (CLASS_IMAGES, 1) and "class image 1 / 3" in seen[0][2]
    run = ctx.ws.root / "runs" / "r1"
    assert not any(run.iterdir())
    ctx.worker.count = count
    config = new_run_config(ctx, *page)
    start_new(ctx, config, GENERATE, 2)
    worker.join(600)
    s = worker.status()
    assert s.state == FINISHED and s.step == 2, s.message
    assert [json.loads(x)["class"] for x in (run / "class_set" / "metadata.jsonl").read_text().splitlines()[1:]] == \
        ["circle", "circle"]
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    # the same run from the command line: the page's values as a run file, the class set as --prior-dir
    run_file = tmp_path / "run.toml"
    run_file.write_text(config.updated({"reg": "auto", "prior_dir": "", "out": ""}).to_toml(), encoding="utf-8")
    cli = tmp_path / "cli"
    assert main(["train", "--config", str(run_file), "--out", str(cli), "--prior-dir", str(run / "class_set"),
                 "--device", "cpu", "--no-progress"]) == 0
    page_toml, cli_toml = (read_section(p / "config.toml", "train") for p in (run, cli))
    assert page_toml.pop("out") != cli_toml.pop("out")
    assert page_toml == cli_toml and page_toml["reg"] == "prior"

"""Components of the prepare stage: PrepareConfig, subject specs, the contact sheet helpers, and
a run file driving `mudi prepare` / `mudi compose`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.cli import main
from mudi.errors import MudiError
from mudi.prepare import PhotoResult, PrepareConfig, SubjectSpec, failure_table, results_table
from mudi.prepare.report import contact_sheet
from mudi.subjects import SubjectSet


def test_prepare_config_checks():
    ok = PrepareConfig(subjects=["olis corgi=a", "hta chow=b"], out="o")
    ok.check()
    PrepareConfig(source="s", out="o").check()
    for cfg, needle in (
        (PrepareConfig(out="o"), "nothing to prepare"),
        (PrepareConfig(source="s", subjects=["x y=z"], out="o"), "not both"),
        (PrepareConfig(source="s"), "--out"),
        (PrepareConfig(source="s", out="o", threshold=0.3, boxes="b.json"), "--threshold, --boxes: only used with --subject"),
        (ok.updated({"threshold": 1.5}), "--threshold"),
        (ok.updated({"margin": 0.5}), "--margin"),
        (ok.updated({"nms_iou": 0.0}), "--nms-iou"),
    ):
        with pytest.raises(MudiError, match=needle):
            cfg.check()
    assert PrepareConfig(segmenter="GrabCut").uses_grabcut and not ok.uses_grabcut


def test_prepare_config_round_trips_through_a_run_file(tmp_path):
    cfg = PrepareConfig(subjects=["olis corgi=a", "hta chow chow=b"], out="o", threshold=0.3, strict=True)
    run = tmp_path / "run.toml"
    run.write_text(cfg.to_toml() + "\n[compose]\nn = 2\n")
    assert PrepareConfig.from_toml(run) == cfg
    run.write_text("[prepare]\nthreshhold = 0.3\n")
    with pytest.raises(MudiError, match="unknown option 'threshhold'. Did you mean threshold"):
        PrepareConfig.from_toml(run)


def test_subject_spec_parse():
    spec = SubjectSpec.parse("  olis   corgi = photos/corgi ")
    assert (spec.phrase, spec.folder, spec.identifier, spec.cls) == ("olis corgi", Path("photos/corgi"), "olis", "corgi")
    for bad, needle in (("olis corgi", "IDENTIFIER CLASS=FOLDER"), ("olis corgi=", "folder after '=' is empty"),
                        ("olis=x", "identifier and a class")):
        with pytest.raises(MudiError, match=needle):
            SubjectSpec.parse(bad)


def _result(ok: bool) -> PhotoResult:
    img = Image.new("RGB", (40, 30), (10, 20, 30))
    mask = np.zeros((30, 40), bool)
    mask[5:20, 5:30] = True
    return PhotoResult("a", "olis corgi", Path(f"/x/{'ok' if ok else 'bad'}.jpg"), img, "c",
                       "detected", mask=mask if ok else None, reason="" if ok else "no box above 0.2", score=0.5)


def test_tables_and_contact_sheet():
    results = [_result(True), _result(False)]
    assert "bad.jpg" in failure_table(results) and "ok.jpg" not in failure_table(results)
    assert failure_table(results[:1]) == "  (no failures)"
    table = results_table(results)
    assert "ok (score 0.50)" in table and "FAILED: no box above 0.2" in table
    plain = contact_sheet(results, cell=64)
    titled = contact_sheet(results, cell=64, title="mudi prepare | a title")
    assert titled.width == plain.width and titled.height > plain.height


def test_cli_run_file_drives_prepare_and_compose(tmp_path, data_dir, capsys):
    src = data_dir / "subjects" / "dog6_and_dog2"
    run = tmp_path / "run.toml"
    run.write_text(f'[prepare]\nsource = "{src}"\nout = "{tmp_path / "set"}"\n\n'
                   f'[compose]\nsubjects = "{tmp_path / "set"}"\nout = "{tmp_path / "comp"}"\nn = 2\nsize = 64\n')
    assert main(["prepare", "--config", str(run)]) == 0
    assert len(SubjectSet.load(tmp_path / "set")) == 2
    assert PrepareConfig.from_toml(tmp_path / "set" / "config.toml") == PrepareConfig(source=str(src), out=str(tmp_path / "set"))
    assert main(["compose", "--config", str(run), "--n", "3", "--no-progress"]) == 0  # flags override the file
    assert len((tmp_path / "comp" / "captions.jsonl").read_text().splitlines()) == 3
    run.write_text("[compose]\nsizee = 3\n")
    assert main(["compose", "--config", str(run)]) == 2
    assert "unknown option 'sizee'" in capsys.readouterr().err

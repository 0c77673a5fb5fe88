"""The demo's numbers against recorded ones: a shortened `mudi demo` on the shipped toy model (the
demo's defaults and method list, fewer steps and images: mudi.toy.reference) compared with
tests/data/demo_reference.json, so a change in results is seen the day it happens. Re-record
deliberately with `python scripts/record_demo_reference.py` (see the README, "Reproducible numbers")."""

import copy
import json
import re
import warnings
from pathlib import Path

import pytest

from mudi.toy import reference

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / reference.REFERENCE_PATH).read_text(encoding="utf-8"))
PINS = reference.read_constraints(ROOT / "constraints.txt")


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """The shortened demo, run once for the tests below (about a minute on one core)."""
    return reference.run_short_demo(tmp_path_factory.mktemp("reference") / "demo", PINS)


def test_shortened_demo_figures_match_the_recording(short_demo):
    """Every default method's mean D&C (to 1e-3), success and count errors (exactly), per image too."""
    assert set(short_demo["methods"]) == set(short_demo["settings"]["methods"])
    message = reference.regression_report(RECORDED, short_demo)
    assert message is None, message


def test_shortened_demo_lora_weights_match_the_recording(short_demo):
    """Kernel-level drift (a library kernel) shows in the LoRA weights first. On another CPU kernel kind
    than the recording's the weights differ in their last bits by design: only a larger drift fails
    there, and a warning says the README's table may not reproduce on this CPU."""
    assert set(short_demo["lora_fingerprints"]) >= {"lora_none", "lora_segmix"}
    if reference.weight_tolerance(RECORDED, short_demo) != reference.WEIGHT_TOLERANCE:
        strict = reference.weight_report(RECORDED, short_demo, reference.WEIGHT_TOLERANCE)
        if strict:
            warnings.warn("another CPU kernel kind than the recording's:\n" + strict)
    message = reference.weight_report(RECORDED, short_demo)
    assert message is None, message


def test_weight_tolerance_is_strict_only_on_the_recorded_cpu_kind():
    other = copy.deepcopy(RECORDED)
    other["environment"]["cpu_capability"] = "OTHER"
    assert reference.weight_tolerance(RECORDED, copy.deepcopy(RECORDED)) == reference.WEIGHT_TOLERANCE
    assert reference.weight_tolerance(RECORDED, other) == reference.OTHER_CPU_WEIGHT_TOLERANCE
    # a drift of 1e-5 relative fails on the recorded CPU kind, passes on another, 1e-2 fails on both
    for drift, same_fails, other_fails in ((1e-5, True, False), (1e-2, True, True)):
        for env, fails in ((copy.deepcopy(RECORDED), same_fails), (other, other_fails)):
            cur = {"environment": env["environment"], "lora_fingerprints": copy.deepcopy(RECORDED["lora_fingerprints"])}
            first = next(iter(cur["lora_fingerprints"].values()))
            first["l2"] *= 1 + drift
            assert (reference.weight_report(RECORDED, cur) is not None) == fails, (drift, env["environment"])


def test_recording_describes_todays_shortened_demo():
    """Fast check (no run): the recording was made with the demo's current defaults and SHORT_DEMO."""
    current = {"settings": reference.recorded_settings(reference.short_demo_config("unused"))}
    differences = reference.setting_differences(RECORDED, current)
    assert not differences, (f"the demo's settings changed since {reference.REFERENCE_PATH} was recorded: "
                             f"{differences}; re-record with `{reference.RECORD_COMMAND}`")


def test_recording_was_made_on_the_pinned_versions():
    """Every pinned library is recorded, at its pin: constraints.txt and the recording move together."""
    recorded = RECORDED["environment"]["versions"]
    off = {k: (recorded.get(k), v) for k, v in PINS.items() if (recorded.get(k) or "").split("+")[0] != v}
    assert not off, (f"recorded vs pinned {off}: after updating constraints.txt, reinstall with it and "
                     f"re-record with `{reference.RECORD_COMMAND}`")


def test_readme_installs_use_the_constraints():
    """Both README set-up commands install with -c constraints.txt and the torch they pin is its torch."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        command = readme.split(marker, 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
        assert re.search(r"pip install -e (\.|\"\.\[test\]\") -c constraints\.txt", command), command
        assert f"torch=={PINS['torch']}" in command, command
    for name in ("diffusers", "transformers", "peft", "numpy", "pillow"):
        assert name in PINS


def _edited(record: dict, edit) -> dict:
    record = copy.deepcopy(record)
    edit(record)
    return record


def test_report_says_what_differs_and_how_to_re_record():
    """The comparison can fail: D&C beyond the tolerance, a success, a new method, a changed setting,
    moved weights; the message names them, the version differences and the re-record command."""
    assert reference.regression_report(RECORDED, RECORDED) is None
    assert reference.weight_report(RECORDED, RECORDED) is None
    name = next(iter(RECORDED["methods"]))
    image = next(iter(RECORDED["methods"][name]["per_image"]))

    def nudge(by):
        def edit(r):
            m = r["methods"][name]
            m["dnc_mean"] = (m["dnc_mean"] or 0.0) + by
        return edit

    assert reference.regression_report(RECORDED, _edited(RECORDED, nudge(5e-4))) is None  # within 1e-3
    msg = reference.regression_report(RECORDED, _edited(RECORDED, nudge(2e-3)))
    assert f"{name}: dnc_mean recorded" in msg and reference.RECORD_COMMAND in msg

    def flip_and_upgrade(r):
        cell = r["methods"][name]["per_image"][image]
        cell["success"] = not cell["success"]
        r["methods"]["new_row"] = copy.deepcopy(r["methods"][name])
        r["settings"]["gamma"] = 3.0
        r["environment"]["versions"]["torch"] = "9.9.9"
        r["environment"]["cpu_capability"] = "OTHER"

    msg = reference.regression_report(RECORDED, _edited(RECORDED, flip_and_upgrade))
    assert f"{name} image {image}: success" in msg
    assert "new_row: run now, but not in the recording" in msg
    assert "--gamma: recorded" in msg and "now 3.0" in msg
    assert "torch: recorded" in msg and "now 9.9.9" in msg and "cpu_capability" in msg

    lora = next(iter(RECORDED["lora_fingerprints"]))

    def drift(r):
        r["lora_fingerprints"][lora]["l2"] *= 1 + 1e-7

    msg = reference.weight_report(RECORDED, _edited(RECORDED, drift))
    assert f"{lora}: l2" in msg and "none: same versions" in msg and reference.RECORD_COMMAND in msg

"""mudi.settings: fields with help, run files with a table per stage, flags from fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from mudi.errors import MudiError
from mudi.settings import (RunOptions, Settings, add_arguments, field_help, given_values, read_section, resolve,
                           run_options, setting)


@dataclass
class DemoSettings(Settings):
    SECTION: ClassVar[str] = "compose"
    n: int = setting(16, "number of composites")
    mix: str = setting("segmix", "mixing method", choices=("segmix", "cutmix", "none"))
    scale: float = setting(0.5, "a fraction")
    tags: list = setting(["x"], "repeatable", flag="--tag")
    fast: bool = setting(False, "a switch")


def test_updated_coerces_checks_choices_and_names_unknown_keys():
    cfg = DemoSettings().updated({"n": "4", "scale": 1, "tags": "y"})
    assert (cfg.n, cfg.scale, cfg.tags) == (4, 1.0, ["y"])
    assert DemoSettings().tags is not DemoSettings().tags  # a fresh list per instance
    with pytest.raises(MudiError, match="choose one of segmix, cutmix, none"):
        DemoSettings().updated({"mix": "segmx"})
    with pytest.raises(MudiError, match=r"unknown option 'nn'.*Valid options: fast, mix, n, scale, tags"):
        DemoSettings().updated({"nn": 3}, where="run.toml")
    with pytest.raises(MudiError, match="'n' must be a int"):
        DemoSettings().updated({"n": 2.5})


def test_toml_round_trip_and_run_file_tables(tmp_path):
    cfg = DemoSettings(n=3, tags=['a "quoted"\nline'])
    path = tmp_path / "one.toml"
    path.write_text(cfg.to_toml(title="test"))
    assert "[compose]" in path.read_text()
    assert DemoSettings.from_toml(path) == cfg
    run = tmp_path / "run.toml"
    run.write_text('[compose]\nn = 5\n[train]\nrank = 4\n')
    assert DemoSettings.from_toml(run).n == 5
    assert read_section(run, "generate") == {}
    flat = tmp_path / "flat.toml"
    flat.write_text("n = 7\n")
    assert DemoSettings.from_toml(flat).n == 7
    mixed = tmp_path / "mixed.toml"
    mixed.write_text("n = 7\n[train]\nrank = 4\n")
    with pytest.raises(MudiError, match="outside a stage table"):
        DemoSettings.from_toml(mixed)
    with pytest.raises(MudiError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("n = ")
        DemoSettings.from_toml(tmp_path / "bad.toml")


def test_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser, DemoSettings, ["n", "mix", "tags", "fast"])
    add_arguments(parser, RunOptions, ["device", "progress"])
    help_text = parser.format_help()
    assert "number of composites (default: 16)" in help_text and "--tag" in help_text and "--no-progress" in help_text
    args = parser.parse_args(["--n", "2", "--tag", "a", "--tag", "b", "--no-progress"])
    assert given_values(args, DemoSettings) == {"n": 2, "tags": ["a", "b"]}
    assert run_options(args) == RunOptions(progress=False)
    assert given_values(parser.parse_args([]), DemoSettings) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--mix", "other"])
    assert field_help(DemoSettings, "scale") == "a fraction"


def test_resolve_layers_defaults_run_file_and_flags(tmp_path):
    run = tmp_path / "run.toml"
    run.write_text("[compose]\nn = 5\nscale = 0.25\n")
    cfg = resolve(DemoSettings, run_file=run, values={"n": 9})
    assert (cfg.n, cfg.scale, cfg.mix) == (9, 0.25, "segmix")

import subprocess
import sys

from mudi.cli import COMMANDS, build_parser, main


def test_help_lists_every_built_verb(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "usage: mudi" in text
    assert main([]) == 2  # no verb: help and a non-zero exit


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "mudi.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("mudi ")


def test_commands_are_unique():
    assert len(COMMANDS) == len(set(COMMANDS))

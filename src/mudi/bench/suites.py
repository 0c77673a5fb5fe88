"""Prompt suites for ``mudi bench``: the prompts every method is asked to draw.

A suite is a JSON file (shipped ones live in ``mudi/bench/suites/``; ``--suite FILE`` reads
your own) with:

- ``templates``: ``{"object": [...], "live": [...]}`` — single-subject templates with ``{}``
  where the subject goes ("a {} in the jungle"); ``live`` is used when any subject's class is in
  ``live_classes`` (DreamBench's dogs and cats), ``object`` otherwise;
- ``classes`` (optional): subject name → class, facts of the benchmark;
- ``pairs`` (optional): the subject combinations the suite was defined on (names);
- ``name``, ``description``, ``source``, ``licence``, ``rule`` (text).

**Several subjects in one template** (:func:`multi_subject_prompt`): for ``PREFIX{}SUFFIX`` the
prefix is repeated for each subject and the subjects are joined with commas and a final "and":
"a {} in the jungle" with subjects a, b gives "a {a} and a {b} in the jungle"; "a red {}" gives
"a red {a} and a red {b}". ``{a}`` is a ``mudi generate`` placeholder: it expands to the
subject's "identifier class" phrase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from mudi.errors import MudiError

SUITES_DIR = Path(__file__).resolve().parent / "suites"


def shipped_suites() -> list[str]:
    """Names of the suites shipped with mudi."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.json"))


def multi_subject_prompt(template: str, keys: Sequence[str]) -> str:
    """``template`` (one ``{}``) written for the subjects ``keys`` as ``{key}`` placeholders."""
    if template.count("{}") != 1:
        raise MudiError(f"suite template {template!r}: needs exactly one {{}} where the subjects go.")
    prefix, suffix = template.split("{}")
    parts = [f"{prefix}{{{k}}}" for k in keys]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return joined + suffix


@dataclass
class Suite:
    """A prompt suite (see the module docstring)."""

    name: str
    templates: dict[str, list[str]]
    live_classes: list[str] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)
    pairs: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def kind(self, subject_classes: Sequence[str]) -> str:
        """``live`` when a class names a live subject and the suite has live templates, else ``object``."""
        words = {w for c in subject_classes for w in c.lower().split()}
        if "live" in self.templates and words & {c.lower() for c in self.live_classes}:
            return "live"
        return "object"

    def prompts(self, keys: Sequence[str], subject_classes: Sequence[str], limit: int = 0) -> list[str]:
        """The suite's prompts for subjects ``keys`` (placeholders), at most ``limit`` (0: all)."""
        out = [multi_subject_prompt(t, keys) for t in self.templates[self.kind(subject_classes)]]
        return out[:limit] if limit else out

    def to_dict(self) -> dict:
        """What the bench table records about the suite."""
        return {"name": self.name, "path": str(self.path) if self.path else None, **self.info}


def load_suite(spec: str) -> Suite:
    """A shipped suite by name (:func:`shipped_suites`) or a suite JSON file.

    Raises:
        MudiError: unknown name, unreadable file, or a file that is not a suite.
    """
    path = Path(spec)
    if not path.suffix == ".json" or not path.exists():
        if spec not in shipped_suites():
            raise MudiError(f"--suite {spec!r}: not a suite file and not a shipped suite "
                            f"({', '.join(shipped_suites())}).")
        path = SUITES_DIR / f"{spec}.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        templates = {str(k): [str(t) for t in v] for k, v in d["templates"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise MudiError(f"--suite {path}: not a prompt suite ({exc.__class__.__name__}: {exc}); it needs "
                        "\"templates\": {\"object\": [\"a {} in the jungle\", ...]}.") from None
    if not templates.get("object"):
        raise MudiError(f"--suite {path}: \"templates\" needs a non-empty \"object\" list.")
    for ts in templates.values():
        for t in ts:
            multi_subject_prompt(t, ["a"])  # each template has one {}
    info = {k: str(d[k]) for k in ("description", "source", "licence", "rule") if k in d}
    return Suite(str(d.get("name") or path.stem), templates, list(d.get("live_classes") or []),
                 dict(d.get("classes") or {}), list(d.get("pairs") or []), info, path)


__all__ = ["SUITES_DIR", "Suite", "load_suite", "multi_subject_prompt", "shipped_suites"]

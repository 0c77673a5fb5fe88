"""Prompts of a ``mudi generate`` run: placeholders, the subjects a prompt names, prompt files.

Subjects of a prompt: the subject set's identifiers that occur in the prompt as words, in
order of appearance (:meth:`~mudi.subjects.SubjectSet.subjects_in_prompt`). Placeholders
``{key}``, ``{identifier}`` or ``{identifier class}`` are expanded to the subject's phrase
(``"a photo of {a} and {b}"`` → ``"a photo of olis corgi and hta chow chow"``). Errors:
a placeholder naming no subject of the set, a word that is a known identifier token
(:data:`mudi.subjects.DEFAULT_IDENTIFIERS`, e.g. ``ult``) but not one of this set's, and a
prompt naming no subject at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mudi.errors import MudiError
from mudi.subjects import DEFAULT_IDENTIFIERS, Subject, SubjectSet

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def resolve_prompt(sset: SubjectSet, prompt: str, *, where: str = "") -> tuple[str, list[Subject]]:
    """Expand ``{placeholders}`` and find the prompt's subjects; MudiError on unknown names.

    Returns:
        ``(prompt, subjects)`` with the placeholders replaced by phrases and the subjects in
        order of appearance (1 <= k <= K).
    """
    where = where or f"prompt {prompt!r}"
    known = ", ".join(f"{s.identifier} ({s.phrase}, key {s.key})" for s in sset.subjects)

    def expand(m: re.Match) -> str:
        name = m.group(1).strip()
        for s in sset.subjects:
            if name in (s.key, s.identifier, s.phrase) or name.lower() == s.phrase.lower():
                return s.phrase
        raise MudiError(f"{where}: placeholder {{{name}}} names no subject of the set; known subjects: {known}.")

    text = _PLACEHOLDER.sub(expand, prompt)
    own = {s.identifier.lower() for s in sset.subjects}
    foreign = sorted({w for w in re.findall(r"[A-Za-z0-9_\-]+", text)
                      if w.lower() in DEFAULT_IDENTIFIERS and w.lower() not in own})
    if foreign:
        raise MudiError(
            f"{where}: {', '.join(repr(w) for w in foreign)} looks like a subject identifier but is not in "
            f"this subject set; known subjects: {known}."
        )
    subjects = sset.subjects_in_prompt(text)
    if not subjects:
        raise MudiError(
            f"{where}: names none of the subjects; write their identifiers (e.g. "
            f"\"a photo of {' and '.join(s.phrase for s in sset.subjects[:2])}\") or placeholders like "
            f"{{{sset.subjects[0].key}}}. Known subjects: {known}."
        )
    return text, subjects


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped) or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise MudiError(f"{path}: prompts file not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MudiError(f"{path}: not a UTF-8 text file.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MudiError(f"{path}: not valid JSON ({exc.msg}).") from None
        if not isinstance(data, list) or not all(isinstance(p, str) and p.strip() for p in data):
            raise MudiError(f"{path}: expected a JSON list of non-empty prompt strings.")
        prompts = [p.strip() for p in data]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise MudiError(f"{path}: contains no prompts (one prompt per line).")
    return prompts

"""One config story for every stage: dataclass fields that carry their default and help, TOML
run files with a table per stage, and command-line flags made from the fields.

A stage config is a ``@dataclass`` that mixes in :class:`Settings` and declares each field with
:func:`setting`::

    @dataclass
    class ComposeConfig(Settings):
        SECTION: ClassVar[str] = "compose"
        n: int = setting(16, "number of composites to write")

Then ``ComposeConfig.from_toml("run.toml")`` reads the ``[compose]`` table of a run file,
``cfg.updated({"n": 4})`` returns a checked copy, ``cfg.to_toml()`` writes the table back, and
:func:`add_arguments` / :func:`given_values` build the ``mudi compose`` flags from the same
fields, so a default and its help exist exactly once. Invocation options that do not describe
the result (resume, overwrite, device, progress) live in :class:`RunOptions` and are never
persisted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, TypeVar

from mudi.errors import MudiError
from mudi.io import read_user_file

#: Tables a run file may hold, in pipeline order.
STAGE_SECTIONS = ("prepare", "compose", "priors", "train", "merge", "generate", "evaluate", "bench")

S = TypeVar("S", bound="Settings")


def setting(default: Any, help: str, *, choices: Iterable[Any] = (), flag: str = "", metavar: str = "",
            separator: str = "") -> Any:
    """A dataclass field with its default and help text (lists and dicts get a fresh copy per instance).

    Args:
        default: the default value; its type is the field's type for coercion.
        help: one line for ``--help`` and for readers of the dataclass.
        choices: the allowed values, checked by :meth:`Settings.updated` and by argparse.
        flag: the command-line flag when it differs from ``--field-name``.
        metavar: argparse metavar.
        separator: for a list field, the flag takes one value split on this (``--methods a,b``)
            instead of one flag per item.
    """
    meta = {"help": help, "choices": tuple(choices), "flag": flag, "metavar": metavar, "separator": separator}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_help(cls: type, name: str) -> str:
    """The help text declared with :func:`setting` for field ``name`` of ``cls``."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


class Settings:
    """Mixin for stage configs (``@dataclass`` subclasses); see the module docstring."""

    #: The run-file table this config reads and writes ("" = top-level keys only).
    SECTION: ClassVar[str] = ""

    def updated(self: S, values: Mapping[str, Any], *, where: str = "") -> S:
        """A copy with ``values`` applied: keys may use dashes, ``None`` values are skipped, every
        value is coerced to the field's type and checked against its choices.

        Raises:
            MudiError: an unknown key (the message lists the close and the valid names) or a value
                of the wrong type or outside the choices; ``where`` (a file name) prefixes it.
        """
        known = {f.name: f for f in fields(self)}  # type: ignore[arg-type]
        prefix = f"{where}: " if where else ""
        changes = {}
        for key, value in values.items():
            key = str(key).replace("-", "_")
            if value is None:
                continue
            if key not in known:
                raise MudiError(f"{prefix}{unknown_key_message(key, known)}")
            f = known[key]
            value = coerce(key, value, _default_of(f), prefix)
            choices = f.metadata.get("choices") or ()
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
            if choices and bad:
                raise MudiError(f"{prefix}option {key} = {bad[0]!r}: choose one of {', '.join(map(str, choices))}.")
            changes[key] = value
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any], *, where: str = "") -> S:
        """The defaults updated with ``values`` (see :meth:`updated`)."""
        return cls().updated(values, where=where)

    @classmethod
    def from_toml(cls: type[S], path: str | Path) -> S:
        """Read this config's table of a run file (see :func:`read_section`)."""
        return cls.from_dict(read_section(path, cls.SECTION), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Every field, in declaration order (plain Python values)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_toml(self, *, title: str = "") -> str:
        """The config as a TOML run file holding one ``[SECTION]`` table (every field)."""
        lines = [f"# {title}", ""] if title else []
        if self.SECTION:
            lines.append(f"[{self.SECTION}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in self.to_dict().items()]
        return "\n".join(lines) + "\n"

    def check(self) -> None:
        """Validate the values (override in a stage config); raise MudiError on a problem."""


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    """"unknown option 'x'. Did you mean ...? Valid options: ..." (one line)."""
    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown option {key!r}.{hint} Valid options: {', '.join(names)}."


def coerce(key: str, value: Any, default: Any, prefix: str = "") -> Any:
    """Convert ``value`` to the type of the field's ``default``, or raise MudiError."""
    want = type(default)
    try:
        if want is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if want is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if want is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if want is list:
            if isinstance(value, str):
                return [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if want is str:
            if isinstance(value, Path):
                return str(value)
            if not isinstance(value, str):
                raise TypeError
            return value
        if default is None or isinstance(value, want):
            return value
    except (TypeError, ValueError):
        pass
    raise MudiError(f"{prefix}option {key!r} must be a {want.__name__}, got {value!r}.")


# ----------------------------------------------------------------------------- TOML


def read_run_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML run file; MudiError (naming the file) when it is missing or not TOML."""
    return read_user_file(path, "config", "TOML")


def read_section(path: str | Path, section: str) -> dict[str, Any]:
    """The settings of one stage in a run file.

    A run file holds ``[prepare] [compose] [train] [generate] [evaluate]`` tables; a file with none
    of them is a single-stage file whose top-level keys are that stage's settings (the format of
    older ``OUT/config.toml`` files). A run file must not mix stage tables and loose keys.
    """
    data = read_run_file(path)
    tables = [k for k in data if k in STAGE_SECTIONS and isinstance(data[k], dict)]
    if not tables or not section:
        return data
    loose = [k for k in data if k not in tables]
    if loose:
        raise MudiError(
            f"{path}: {', '.join(map(repr, loose))} outside a stage table; a run file holds only "
            f"[{'] ['.join(STAGE_SECTIONS)}] tables."
        )
    return dict(data.get(section, {}))


def toml_value(value: Any) -> str:
    """One TOML value (bool, int, float, str, list of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_string(s: str) -> str:
    """A TOML basic string with every control character escaped."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}
    out = []
    for ch in s:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, names: Iterable[str]) -> None:
    """Add one flag per field in ``names`` (in that order), built from the field declaration.

    The flag is ``--name-with-dashes`` unless :func:`setting` gave ``flag=``; the help is the
    field's help plus its default; bools become switches (``--x`` for a False default,
    ``--x/--no-x`` for a True default); list fields take the flag once per item. Every dest
    defaults to ``None``, so :func:`given_values` can tell a flag the user gave from a default.
    Do not combine with ``ArgumentDefaultsHelpFormatter`` (the help already names the default).
    """
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f = by_name[name]
        default = _default_of(f)
        meta = f.metadata
        flag = meta.get("flag") or "--" + name.replace("_", "-")
        shown = "" if default is False or default in ("", [], None) else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None,
                                  "help": (str(meta.get("help", "")) + shown).replace("%", "%%")}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
            if not default:
                kwargs["default"] = None
        else:
            if isinstance(default, list) and meta.get("separator"):
                kwargs["type"] = lambda text, sep=meta["separator"]: [v.strip() for v in text.split(sep) if v.strip()]
                shown = f" (default: {meta['separator'].join(map(str, default))})" if default else ""
                kwargs["help"] = (str(meta.get("help", "")) + shown).replace("%", "%%")
            elif isinstance(default, list):
                kwargs["action"] = "append"
            elif default is not None:
                kwargs["type"] = type(default)
            if meta.get("choices") and not isinstance(default, list):
                kwargs["choices"] = list(meta["choices"])
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kwargs)


def add_config_argument(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """``--config FILE``: a run file whose ``[cls.SECTION]`` table gives the settings (flags override
    it); pass ``args.config`` to :func:`resolve` as ``run_file``."""
    parser.add_argument("--config", default=None, metavar="TOML",
                        help=f"run file whose [{cls.SECTION}] table (or top-level keys) gives the settings; "
                             "flags override it")


def given_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set (flags added by :func:`add_arguments`)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def resolve(cls: type[S], *, run_file: str | Path | None = None, values: Mapping[str, Any] | None = None) -> S:
    """Defaults, then the run file's table for this stage, then ``values`` (e.g. flags), checked."""
    config = cls.from_toml(run_file) if run_file else cls()
    config = config.updated(values or {})
    config.check()
    return config


# ----------------------------------------------------------------------------- invocation


@dataclass(frozen=True)
class RunOptions(Settings):
    """How to run a stage, as opposed to what it makes: never written to an output folder."""

    resume: bool = setting(False, "continue the run in the output folder where it stopped")
    overwrite: bool = setting(False, "write into a non-empty output folder (replacing what a new run makes)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = setting(True, "show progress bars")


RUN_OPTION_NAMES = ("resume", "overwrite", "device", "progress")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` a command line gave (flags added with ``add_arguments(p, RunOptions, ...)``)."""
    return RunOptions().updated(given_values(args, RunOptions))


__all__ = [
    "RUN_OPTION_NAMES",
    "RunOptions",
    "STAGE_SECTIONS",
    "Settings",
    "add_arguments",
    "add_config_argument",
    "coerce",
    "field_help",
    "given_values",
    "read_run_file",
    "read_section",
    "resolve",
    "run_options",
    "setting",
    "toml_string",
    "toml_value",
    "unknown_key_message",
]

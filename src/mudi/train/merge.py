"""``mudi merge``: several LoRAs (e.g. one per subject) into one — MuDI's modular customization.

METHOD.md §5: train a LoRA per subject separately, combine them, then fine-tune briefly with
Seg-Mix on all subjects (``mudi train --init-lora MERGED --mix segmix``) to separate identities.

Rules (per adapted module; LoRA *i* has factors ``A_i`` (r_i × in), ``B_i`` (out × r_i), scale
``s_i = alpha_i / r_i`` and merge weight ``w_i``, default 1):

- ``concat`` (default): the ranks are stacked, ``A = [c_i A_i]`` (rows), ``B = [sign(w_i) c_i B_i]``
  (columns) with ``c_i = sqrt(|w_i s_i|)`` and scale 1, so the merged update is exactly
  ``B A = Σ w_i s_i B_i A_i``: no subject's update is averaged away or mixed with another's
  (no cross terms). Rank = Σ r_i.
- ``sum``: the same weighted sum of updates ``Σ w_i s_i B_i A_i``, re-factored to ``--rank`` r
  (default: the largest source rank) by a truncated SVD — the best rank-r approximation, exact
  when r ≥ Σ r_i. With weights 1/n it is the average of the updates.
  (Adding the factors themselves, ``(Σ B_i)(Σ A_i)``, as some tools do, creates cross terms
  ``B_i A_j`` between subjects; mudi does not offer it.)

The merged folder is a normal mudi LoRA folder: ``pytorch_lora_weights.safetensors``
(``pipe.load_lora_weights(M)``), ``lora_kohya.safetensors`` (when every source has one),
``config.toml`` (a ``[train]`` table: base model, VAE, resolution, subject set, rank — what
``mudi generate --lora M`` and ``mudi train --init-lora M`` read) and ``merge.json`` (rule,
weights, and each source with its base, rank and subjects).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mudi.errors import MudiError
from mudi.models.lora_files import (LoraModule, LoraTable, lora_file, read_diffusers_lora, read_kohya_lora, write_diffusers_lora,
                                    write_kohya_lora)
from mudi.settings import RunOptions, Settings, read_section, setting
from mudi.train.checkpoints import CONFIG_NAME, abs_if_local
from mudi.train.config import TrainConfig

RULES = ("concat", "sum")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"
MERGE_INFO = "merge.json"


@dataclass
class MergeConfig(Settings):
    """Everything that defines a ``mudi merge`` run."""

    SECTION: ClassVar[str] = "merge"

    loras: list[str] = setting([], "a LoRA to merge: a `mudi train` output folder (repeat, at least two)",
                               flag="--lora", metavar="DIR")
    out: str = setting("", "output folder of the merged LoRA (new or empty; see --overwrite)", metavar="OUT")
    rule: str = setting("concat", "concat = stack the ranks (each update kept exactly; rank = sum of ranks); "
                                  "sum = weighted sum of the updates re-factored to --rank by SVD", choices=RULES)
    weights: str = setting("", "one weight per --lora, comma separated (default: 1 each)", metavar="W,W,...")
    rank: int = setting(0, "rank of the merged LoRA with --rule sum (0 = the largest source rank)")
    subjects: str = setting("", "subject set the merged LoRA is used with (default: the sources' common set)",
                            metavar="DIR")

    def weight_list(self) -> list[float]:
        """The merge weights, one per LoRA (1 each by default)."""
        if not self.weights.strip():
            return [1.0] * len(self.loras)
        try:
            values = [float(w) for w in self.weights.split(",")]
        except ValueError:
            raise MudiError(f"--weights {self.weights!r}: give numbers separated by commas, e.g. 1,0.5.") from None
        if len(values) != len(self.loras):
            raise MudiError(f"--weights has {len(values)} values for {len(self.loras)} --lora folders; give one each.")
        if not all(math.isfinite(v) and v != 0 for v in values):
            raise MudiError(f"--weights {self.weights!r}: every weight must be a finite non-zero number.")
        return values

    def check(self) -> None:
        """Validate the options (no file is read); MudiError on the first problem."""
        if len(self.loras) < 2:
            raise MudiError("mudi merge needs at least two LoRAs: pass --lora DIR twice or more.")
        if not self.out:
            raise MudiError("no output folder given: pass --out DIR.")
        if self.rank < 0:
            raise MudiError(f"option rank = {self.rank} is out of range: must be >= 0 (0 = the largest source rank).")
        if self.rank and self.rule == "concat":
            raise MudiError("--rank applies to --rule sum; --rule concat keeps every rank (the sum of the sources').")
        self.weight_list()


@dataclass
class MergeSource:
    """One LoRA to merge: its tables (diffusers, kohya if present) and its training config."""

    path: Path
    table: LoraTable
    kohya: LoraTable | None
    train: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: str) -> "MergeSource":
        weights = lora_file(spec, "--lora")
        folder = weights.parent
        kohya = read_kohya_lora(folder / KOHYA_WEIGHTS) if (folder / KOHYA_WEIGHTS).is_file() else None
        train = read_section(folder / CONFIG_NAME, TrainConfig.SECTION) if (folder / CONFIG_NAME).is_file() else {}
        return cls(folder, read_diffusers_lora(weights), kohya, train)

    def subjects(self) -> dict[str, str]:
        """Key → phrase of the subjects this LoRA learned ({} when its subject set is unknown)."""
        from mudi.metadata import read_metadata

        root = str(self.train.get("subjects") or "")
        if not root or not Path(root).is_dir():
            return {}
        heads, _ = read_metadata(root)
        only = list(self.train.get("only") or []) or list(heads)
        return {k: f"{heads[k][0]} {heads[k][1]}" for k in only if k in heads}

    def describe(self) -> dict[str, Any]:
        """The source as ``merge.json`` lists it."""
        cfg = self.table.adapter_config("unet")
        return {"path": str(self.path.resolve()), "base": self.train.get("base", ""), "rank": cfg.get("r"),
                "alpha": cfg.get("lora_alpha"), "mix": self.train.get("mix", ""),
                "steps": self.train.get("max_train_steps"), "subjects_dir": self.train.get("subjects", ""),
                "subjects": self.subjects()}


def check_compatible(sources: list[MergeSource]) -> None:
    """Same base model, same adapted modules with the same shapes, same targets; else MudiError."""
    first = sources[0]
    bases = {str(s.train.get("base")) for s in sources if s.train.get("base")}
    if len(bases) > 1:
        listing = "; ".join(f"{s.path}: {s.train.get('base')}" for s in sources)
        raise MudiError(f"the LoRAs were trained on different base models ({listing}); merge only LoRAs of one base.")
    for s in sources[1:]:
        for comp in ("unet", "text_encoder", "text_encoder_2"):
            t0 = first.table.adapter_config(comp).get("target_modules")
            t1 = s.table.adapter_config(comp).get("target_modules")
            if t0 and t1 and sorted(t0) != sorted(t1):
                raise MudiError(f"{s.path} adapts {comp} modules {sorted(t1)}, {first.path} adapts {sorted(t0)}; "
                                "merge LoRAs trained with the same --target-modules.")
        a, b = first.table.shapes(), s.table.shapes()
        if set(a) != set(b):
            only = sorted(set(a) ^ set(b))[0]
            raise MudiError(f"{s.path} and {first.path} adapt different modules (e.g. {only}); they were trained on "
                            "different model families or with different targets.")
        bad = next((n for n in a if a[n] != b[n]), None)
        if bad:
            raise MudiError(f"module {bad} has shape {b[bad]} in {s.path} but {a[bad]} in {first.path}: "
                            "the LoRAs belong to different base models.")


def merge_module(parts: list[LoraModule], weights: list[float], rule: str, rank: int = 0) -> LoraModule:
    """One module's merged factors (scale 1); see the module docstring for the rules."""
    dtype = parts[0].a.dtype
    a_rows, b_cols = [], []
    for m, w in zip(parts, weights):
        s = w * m.scale
        c = math.sqrt(abs(s))
        a_rows.append(m.a.double() * c)
        b_cols.append(m.b.double() * math.copysign(c, s))
    a, b = torch.cat(a_rows, 0), torch.cat(b_cols, 1)
    if rule == "sum":
        a, b = _refactor(a, b, rank or max(m.rank for m in parts))
    return LoraModule(a.to(dtype).contiguous(), b.to(dtype).contiguous(), 1.0)


def _refactor(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of ``b a`` (QR of both factors, SVD of the small core); the result
    always has exactly ``rank`` rows (zero rows when the update has a lower rank)."""
    r_in, kernel = a.shape[0], a.shape[1:]
    a2, b2 = a.reshape(r_in, -1), b.reshape(b.shape[0], r_in)
    qb, rb = torch.linalg.qr(b2)
    qa, ra = torch.linalg.qr(a2.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    new_b = torch.zeros(b2.shape[0], rank, dtype=a.dtype)
    new_a = torch.zeros(rank, a2.shape[1], dtype=a.dtype)
    new_b[:, :k] = (qb @ u[:, :k]) * root
    new_a[:k] = root[:, None] * (vh[:k] @ qa.T)
    return new_a.reshape(rank, *kernel), new_b.reshape(b.shape[0], rank, *b.shape[2:])


def merge_tables(tables: list[LoraTable], weights: list[float], rule: str, rank: int = 0) -> LoraTable:
    """Every module of ``tables`` merged (the tables hold the same modules)."""
    return LoraTable({name: merge_module([t.modules[name] for t in tables], weights, rule, rank)
                      for name in tables[0].modules})


def _adapter_config(source: MergeSource, merged: LoraTable) -> dict[str, dict]:
    """The merged file's adapter config per component: the first source's, with r = lora_alpha = the merged rank."""
    out = {}
    for name, m in merged.modules.items():
        comp = name.split(".", 1)[0]
        if comp not in out:
            cfg = dict(source.table.adapter_config(comp))
            if "target_modules" not in cfg:  # a file without an adapter config: the modules' short names
                parts = [n.split(".") for n in merged.modules if n.startswith(comp + ".")]
                cfg["target_modules"] = sorted({".".join(p[-2:]) if p[-1].isdigit() else p[-1] for p in parts})
            cfg.update({"r": m.rank, "lora_alpha": float(m.rank)})
            cfg.setdefault("lora_dropout", 0.0)
            cfg.setdefault("init_lora_weights", "gaussian")
            out[comp] = cfg
    return out


def _merged_train_config(config: MergeConfig, sources: list[MergeSource], rank: int) -> TrainConfig:
    """The ``[train]`` table of the merged folder: base/VAE/resolution of the sources, the subject set, the rank."""
    known = {k: v for k, v in sources[0].train.items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig().updated(known)
    dirs = {str(s.train.get("subjects") or "") for s in sources}
    subjects, only = abs_if_local(config.subjects), []
    if not subjects and len(dirs) == 1:
        subjects = dirs.pop()
        picked = [list(s.train.get("only") or []) for s in sources]
        only = [] if any(not p for p in picked) else list(dict.fromkeys(k for p in picked for k in p))
    targets = sources[0].table.adapter_config("unet").get("target_modules") or cfg.target_modules
    return cfg.updated({"out": str(Path(config.out).resolve()), "subjects": subjects, "only": only,
                        "rank": rank, "alpha": float(rank), "target_modules": list(targets), "init_lora": ""})


@dataclass
class MergeResult:
    """What :func:`merge` wrote: the folder, the merged rank and ``merge.json``'s content."""

    out: Path
    rank: int
    info: dict[str, Any]


def merge(config: MergeConfig, options: RunOptions | None = None) -> MergeResult:
    """Merge LoRAs into one (see the module docstring for the rules and the folder).

    Raises:
        MudiError: bad options, unreadable or incompatible LoRAs (other base model, other
            modules or targets), an output folder in the way; nothing is written then.
    """
    from mudi.io import claim_output_dir, staged_output, write_json_atomic, write_text_atomic

    options = options or RunOptions()
    config.check()
    weights = config.weight_list()
    claim_output_dir(config.out, overwrite=options.overwrite, what="merged LoRA")
    sources = [MergeSource.load(p) for p in config.loras]
    check_compatible(sources)
    merged = merge_tables([s.table for s in sources], weights, config.rule, config.rank)
    rank = next(iter(merged.modules.values())).rank
    info = _merge_info(config, sources, weights, rank)
    train_cfg = _merged_train_config(config, sources, rank)
    with staged_output(config.out, overwrite=options.overwrite, what="merged LoRA") as stage:
        write_diffusers_lora(merged, stage / LORA_WEIGHTS, _adapter_config(sources[0], merged))
        if all(s.kohya is not None for s in sources):
            kohya = merge_tables([s.kohya for s in sources], weights, config.rule, config.rank)
            write_kohya_lora(kohya, stage / KOHYA_WEIGHTS, _kohya_metadata(sources[0].kohya.metadata, rank))
        write_text_atomic(stage / CONFIG_NAME, train_cfg.to_toml(
            title=f"mudi merge ({config.rule} of {len(sources)} LoRAs, see {MERGE_INFO}): base model, subject set "
                  "and LoRA shape of the merged LoRA"))
        write_json_atomic(stage / MERGE_INFO, info)
    for note in info["notes"]:
        print(f"mudi merge: note: {note}", file=sys.stderr)
    return MergeResult(Path(config.out), rank, info)


def _merge_info(config: MergeConfig, sources: list[MergeSource], weights: list[float], rank: int) -> dict[str, Any]:
    described = [s.describe() for s in sources]
    notes = []
    seen: dict[str, str] = {}
    for d in described:
        for phrase in d["subjects"].values():
            if phrase in seen:
                notes.append(f"subject {phrase!r} was learned by both {seen[phrase]} and {d['path']}.")
            seen[phrase] = d["path"]
    if len({d["subjects_dir"] for d in described}) > 1 and not config.subjects:
        notes.append("the LoRAs come from different subject sets: pass --subjects to `mudi generate` "
                     "(or --subjects to mudi merge) to name the set the merged LoRA is used with.")
    return {"rule": config.rule, "weights": weights, "rank": rank, "sources": described,
            "subjects": {k: v for d in described for k, v in d["subjects"].items()}, "notes": notes}


def _kohya_metadata(first: dict[str, str], rank: int) -> dict[str, str]:
    meta = dict(first)
    meta.update({"ss_network_dim": str(rank), "ss_network_alpha": str(float(rank))})
    if "mudi_lora_config" in meta:
        cfg = json.loads(meta["mudi_lora_config"])
        cfg.update({"r": rank, "lora_alpha": float(rank)})
        meta["mudi_lora_config"] = json.dumps(cfg)
    return meta


__all__ = ["MergeConfig", "MergeResult", "RULES", "check_compatible", "merge", "merge_module", "merge_tables"]

"""``mudi train``: DreamBooth-LoRA with Seg-Mix (METHOD.md §2–§3) for SD 1.x/2.x and SDXL.

The recipe reads top to bottom in :func:`train`:

1. validate everything cheap (options, subject set, class set, model folder, resolution),
2. load the pipeline, attach a UNet LoRA (text encoders frozen),
3. cache the text embeddings of the finite caption set and the latents of plain examples,
4. loop over optimizer steps; each example, its noise and its timestep are a pure function of
   ``(seed, example number)``, so a checkpoint only needs the LoRA weights, the optimizer
   state and the step: a resumed run is bitwise identical to an uninterrupted one (CPU),
5. export the LoRA (diffusers + kohya formats), the log, the loss curve and validation grids.

The method lives in the data (:class:`mudi.compose.Composer`); the loop is plain DreamBooth.

Output folder::

    OUT/pytorch_lora_weights.safetensors   diffusers format: pipe.load_lora_weights(OUT)
    OUT/lora_kohya.safetensors             kohya/ComfyUI/A1111 copy (lora_unet_* keys, alpha tensors)
    OUT/config.toml                        the fully resolved run (mudi train --config OUT/config.toml)
    OUT/train_log.jsonl                    per step: step, loss (instance, prior), lr, grad_norm, time,
                                           step_time, step_cpu_time, data_time, kinds, text_encoder_calls
    OUT/loss.png                           loss curve (written at validations and at the end)
    OUT/validation/step_XXXXXX.png         validation grids (prompts x images)
    OUT/summary.json                       counters: cached captions/latents, text-encoder calls, timing
    OUT/checkpoints/step_XXXXXX/           lora.safetensors, optimizer.safetensors (+ torch RNG), state.json,
                                           pytorch_lora_weights.safetensors (this step's LoRA, diffusers format)
    OUT/tensorboard/                       scalars, when the tensorboard package is installed

Resume design: example number ``e`` (global over steps, micro-batches, processes) is drawn by
:class:`ExampleSchedule` from ``(seed, e)`` alone -- which photo, the Seg-Mix draws, the VAE
sample noise, the diffusion noise and the timestep -- so there is no sampler state to restore.
A checkpoint (written to a temp folder, fsynced, renamed) holds the LoRA weights, the
optimizer state, the step and, for completeness, the python/numpy/torch RNG states. A run
killed at any moment resumes from its newest complete checkpoint and ends with exactly the
LoRA of an uninterrupted run (bitwise on CPU).
"""

from __future__ import annotations

import gc
import io
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mudi.train.config import TrainConfig, RESUME_SAFE_FIELDS
from mudi.errors import MudiError
from mudi.models.families import TextEmbeds, family_of
from mudi.models.loading import inspect_model
from mudi.io import prepare_output_dir, save_image_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic

CONFIG_NAME = "config.toml"
LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "summary.json"
CKPT_DIR = "checkpoints"
#: Above this many distinct captions the cache is filled lazily (first use) instead of upfront.
MAX_PRECOMPUTED_CAPTIONS = 1024


# ============================================================================ captions


def subject_captions(subject_set, k: int, mix: str) -> list[str]:
    """Every caption an instance example can have: photo captions and composite captions
    (current subject first, every ordered choice of the k − 1 others)."""
    from mudi.compose import composite_caption

    caps = [ph.caption for s in subject_set for ph in subject_set.photos(s.key)]
    if mix != "none":
        keys = subject_set.keys
        for key in keys:
            others = [o for o in keys if o != key]
            for combo in itertools.permutations(others, k - 1):
                caps.append(composite_caption([subject_set.subject(x).phrase for x in (key, *combo)]))
    return list(dict.fromkeys(caps))


def class_captions(class_photos: dict[str, list], class_names: dict[str, str], keys: list[str], k: int, mix: str) -> list[str]:
    from mudi.compose import composite_caption

    caps = [ph.caption for key in keys for ph in class_photos[key]]
    if mix != "none":
        for key in keys:
            others = [o for o in keys if o != key]
            for combo in itertools.permutations(others, k - 1):
                caps.append(composite_caption([class_names[x] for x in (key, *combo)]))
    return list(dict.fromkeys(caps))


def default_validation_prompts(subject_set, k: int) -> list[str]:
    """"a photo of a {A} and a {B}" for the first k subjects, then each subject alone."""
    phrases = [s.phrase for s in subject_set]
    first = phrases[: max(2, min(k, len(phrases)))]
    body = ", ".join(f"a {p}" for p in first[:-1]) + f" and a {first[-1]}"
    return [f"a photo of {body}"] + [f"a photo of a {p}" for p in phrases]


def fill_subjects(prompt: str, subject_set) -> str:
    """Replace ``{key}`` (e.g. ``{a}``) by that subject's phrase ("olis corgi")."""
    for s in subject_set:
        prompt = prompt.replace("{" + s.key + "}", s.phrase)
    return prompt


class TextCache:
    """Text embeddings per caption, computed once with the pipeline's own ``encode_prompt``.

    Counts text-encoder forward calls (forward hooks) so a run can prove it makes none per step.
    """

    def __init__(self, pipe, family, device: torch.device, dtype: torch.dtype):
        self.pipe, self.family, self.device, self.dtype = pipe, family, device, dtype
        self.cond: dict[str, TextEmbeds] = {}
        self.uncond: TextEmbeds | None = None
        self.calls = 0
        self._hooks = []
        for enc in self.encoders():
            self._hooks.append(enc.register_forward_hook(self._count))

    def encoders(self) -> list[torch.nn.Module]:
        return self.family.text_encoders(self.pipe)

    def _count(self, *_):
        self.calls += 1

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> TextEmbeds:
        return self.family.encode_text(self.pipe, prompts, self.encoders()[0].device).to(self.device, self.dtype)

    def add(self, captions: list[str], batch: int = 16) -> None:
        """Encode and store every caption not cached yet."""
        todo = [c for c in dict.fromkeys(captions) if c not in self.cond]
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            embeds = self._encode(chunk)
            for j, c in enumerate(chunk):
                self.cond[c] = embeds.row(j)

    @torch.no_grad()
    def add_uncond(self, negative: str) -> None:
        """Embeddings of the negative prompt for classifier-free-guided validation images."""
        enc_device = self.encoders()[0].device
        self.uncond = self.family.encode_negative(self.pipe, negative, enc_device).to(self.device, self.dtype)

    def get(self, captions: list[str]) -> TextEmbeds:
        """Batched embeddings; a caption never seen is encoded on the spot (and counted)."""
        missing = [c for c in captions if c not in self.cond]
        if missing:
            if not self.encoders():
                raise RuntimeError(f"caption {missing[0]!r} was not pre-computed and the text encoders were released")
            self.add(missing)
        return TextEmbeds.cat([self.cond[c] for c in captions])


# ============================================================================ data schedule


class ExampleSchedule:
    """Which photo is example number ``e`` and which random streams it uses.

    Photos are visited in a fresh permutation every epoch (epoch = e // number of photos).
    Everything is a function of ``(seed, e)``: no hidden sampler state, so resuming at any
    step reproduces the uninterrupted run exactly.
    """

    def __init__(self, subject_set, seed: int):
        self.items = [(s.key, i) for s in subject_set for i in range(len(subject_set.photos(s.key)))]
        self.seed = int(seed)
        self._perm: tuple[int, np.ndarray] | None = None

    def item(self, e: int) -> tuple[str, int]:
        n = len(self.items)
        epoch, pos = divmod(int(e), n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 1, epoch]).permutation(n))
        return self.items[int(self._perm[1][pos])]

    def numpy_rng(self, e: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 2, int(e)])

    def torch_generator(self, e: int) -> torch.Generator:
        seed = int(np.random.default_rng([self.seed, 3, int(e)]).integers(0, 2**62))
        return torch.Generator("cpu").manual_seed(seed)

    def state(self, next_example: int) -> dict[str, Any]:
        return {"kind": "seeded-counter", "seed": self.seed, "next_example": int(next_example), "photos": len(self.items)}


# ============================================================================ latents


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB → (1, 3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


class LatentEncoder:
    """VAE encoding with a cache of the latent distribution (mean, std) of plain examples."""

    def __init__(self, vae, family, device: torch.device):
        self.vae = vae
        self.family = family
        self.device = device
        self.dtype = next(vae.parameters()).dtype
        self.cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encodes = 0

    @torch.no_grad()
    def distribution(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        x = image_to_tensor(image).to(self.device, self.dtype)
        dist = self.vae.encode(x).latent_dist
        self.encodes += 1
        return dist.mean.float(), dist.std.float()

    def cached(self, key, image) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.cache:
            self.cache[key] = self.distribution(image)
        return self.cache[key]

    def sample(self, dist: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        mean, std = dist
        eps = torch.randn(mean.shape, generator=gen, dtype=torch.float32).to(mean.device)
        return self.family.to_latents(self.vae, mean + std * eps)


# ============================================================================ checkpoints


def _ckpt_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (their state.json exists) sorted by step."""
    root = Path(out) / CKPT_DIR
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name.startswith("step_") and (d / "state.json").is_file():
                try:
                    found.append((int(d.name[5:]), d))
                except ValueError:
                    pass
    return sorted(found)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _optimizer_to_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        meta_state[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
                meta_state[str(pid)][k] = "<tensor>"
            else:
                meta_state[str(pid)][k] = v
    return tensors, {"state": meta_state, "param_groups": sd["param_groups"]}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"state.{pid}.{k}"] if v == "<tensor>" else v) for k, v in st.items()}
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return js, tensors


def _set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    if "python" in js:
        v, st, g = js["python"]
        random.setstate((v, tuple(st), g))
    if "numpy" in js:
        a, keys, pos, has, cached = js["numpy"]
        np.random.set_state((a, np.asarray(keys, dtype=np.uint32), pos, has, cached))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(out: Path, step: int, unet, optimizer, *, scaler=None, sampler: dict, keep: int,
                    extra: dict | None = None, export: Callable[[Path], Any] | None = None) -> Path:
    """Write ``OUT/checkpoints/step_XXXXXX`` atomically (temp folder + rename) and prune old ones.

    Tensors (LoRA weights, optimizer state, torch RNG) go to safetensors, the rest to JSON.
    """
    from safetensors.torch import save_file

    from mudi.models.lora import lora_state_dict

    root = Path(out) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / _ckpt_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file(lora_state_dict(unet), str(tmp / "lora.safetensors"))
        if export is not None:  # the LoRA of this step in diffusers format: pipe.load_lora_weights(folder)
            export(tmp)
        opt_tensors, opt_meta = _optimizer_to_tensors(optimizer)
        rng_js, rng_tensors = _rng_state()
        save_file({**opt_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
        state = {
            "step": int(step),
            "optimizer": opt_meta,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_js,
            "sampler": sampler,
            **(extra or {}),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=float), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step (resume after a kill during pruning)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # prune: keep the newest `keep` checkpoints, and leftovers of interrupted writes
    for s, d in list_checkpoints(out)[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    for d in root.glob(".step_*"):
        shutil.rmtree(d, ignore_errors=True)
    return final


def load_checkpoint(path: Path, unet, optimizer, *, scaler=None) -> dict[str, Any]:
    """Restore LoRA weights, optimizer state, scaler and RNG states; return the state JSON."""
    from safetensors.torch import load_file

    from mudi.models.lora import load_lora_state_dict

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        lora = load_file(str(path / "lora.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors raises its own errors
        raise MudiError(f"{path}: checkpoint is unreadable ({exc}); delete it to resume from an older one.") from None
    load_lora_state_dict(unet, lora)
    opt_sd = _optimizer_from_tensors({k: v for k, v in tensors.items() if k.startswith("state.")}, state["optimizer"])
    optimizer.load_state_dict(opt_sd)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state.get("rng", {}), {k: v for k, v in tensors.items() if k.startswith("rng.")})
    return state


# ============================================================================ artifacts


def _read_log(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for ln in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return rows


def write_loss_plot(log_path: Path, out_path: Path) -> None:
    """loss.png: per-step loss and its moving average (matplotlib, Agg backend)."""
    rows = _read_log(log_path)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    win = max(1, min(50, len(loss) // 10))
    if win > 1:
        ma = np.convolve(loss, np.ones(win) / win, mode="valid")
        ax.plot(steps[win - 1 :], ma, lw=1.6, label=f"moving average ({win})")
    if any("loss_prior" in r for r in rows):
        ax.plot(steps, [r.get("loss_prior", float("nan")) for r in rows], lw=0.8, alpha=0.5, label="prior loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE loss")
    ax.set_title("mudi train")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(out_path, buf.getvalue())


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based)."""
    warm = cfg.lr_warmup_steps
    if cfg.lr_scheduler == "constant":
        return 1.0
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_scheduler == "constant_with_warmup":
        return 1.0
    frac = (step - warm) / max(1, cfg.max_train_steps - warm)
    if cfg.lr_scheduler == "linear":
        return max(0.0, 1.0 - frac)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))  # cosine


# ============================================================================ setup helpers


def _abs_if_local(p: str) -> str:
    if not p:
        return p
    path = Path(p).expanduser()
    return str(path.resolve()) if path.exists() else p


def _resolve_resume(cfg: TrainConfig) -> TrainConfig:
    """Merge a ``--resume`` request with the run's saved config.

    The saved config wins. A data/method option given with a value that differs both from the
    saved one and from the default is refused (it would change the run); the resume-safe
    options (steps, checkpoint/validation intervals, device, ...) are taken from the request.
    """
    out = Path(cfg.out)
    saved_path = out / CONFIG_NAME
    if not saved_path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise MudiError(f"{out}: nothing to resume ({CONFIG_NAME} is missing); it is not a `mudi train` output folder.")
        return cfg  # killed before anything was written: start from scratch
    saved = TrainConfig.from_toml(saved_path)
    default = TrainConfig()
    path_fields = {"subjects", "base", "prior_dir", "vae"}
    for f in saved.to_dict():
        if f in RESUME_SAFE_FIELDS:
            continue
        given, was = getattr(cfg, f), getattr(saved, f)
        if f in path_fields:
            same = _abs_if_local(given) == _abs_if_local(was)
        else:
            same = given == was
        if same or given == getattr(default, f):
            continue
        raise MudiError(
            f"{saved_path}: --resume with {f} = {given!r}, but the run was started with {was!r}. "
            "A resumed run keeps its data and method options; only the step count, checkpoint/validation "
            "intervals and the device may change. Start a new --out for other options."
        )
    always = {"out", "resume", "overwrite", "stop_after", "progress"}
    merged = {
        f: getattr(cfg, f) if (f in always or getattr(cfg, f) != getattr(default, f)) else getattr(saved, f)
        for f in RESUME_SAFE_FIELDS
    }
    return saved.updated(merged)


def _mixed_precision(cfg: TrainConfig, device: torch.device) -> str:
    mp = cfg.mixed_precision
    if mp == "auto":
        return "fp16" if device.type == "cuda" else "no"
    if mp == "fp16" and device.type == "cpu":
        raise MudiError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no.")
    return mp


def _pick_device(name: str) -> torch.device:
    if name in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MudiError(f"--device {name!r} is not a device (use auto, cpu, cuda, cuda:1, mps).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MudiError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MudiError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return dev


def _make_optimizer(params, cfg: TrainConfig):
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
                  eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb  # type: ignore
        except ImportError:
            raise MudiError("--use-8bit-adam needs bitsandbytes: pip install 'mudi[bnb]' (or bitsandbytes).") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, foreach=False, **kwargs)


# ============================================================================ the run


@dataclass
class RunState:
    """Counters reported in summary.json."""

    start_step: int = 0
    step: int = 0
    text_encoder_calls_setup: int = 0
    text_encoder_calls_training: int = 0
    captions_cached: int = 0
    latents_cached: int = 0
    vae_encodes_training: int = 0
    step_times: list[float] = field(default_factory=list)


def prepare_run(config: TrainConfig):
    """Validate a run without loading weights. Returns (config, subject set, class data, model info).

    Raises MudiError for every user mistake: options, output folder, subject set, class set,
    base model folder, resolution.
    """
    from mudi.compose import parse_relative_sizes
    from mudi.models.lora import check_lora_targets
    from mudi.subjects import SubjectSet

    cfg = config
    out = Path(cfg.out)
    if cfg.resume and cfg.overwrite and not (out / CONFIG_NAME).is_file():
        cfg = cfg.updated({"resume": False})  # "resume if there is a run, else start over"
    if cfg.resume:
        if not cfg.out:
            raise MudiError("--resume needs --out: the folder of the run to continue.")
        if not out.exists():
            raise MudiError(f"{out}: nothing to resume (folder not found). Drop --resume to start a new run.")
        cfg = _resolve_resume(cfg)
    cfg.check()
    if not cfg.resume and out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        if not out.is_dir():
            raise MudiError(f"{out}: the output path is a file; choose a folder.")
        raise MudiError(
            f"{out}: the output folder already has content. Pass --resume to continue that run, "
            "--overwrite to start over in it, or choose another --out."
        )
    sset = SubjectSet.load(cfg.subjects)
    if cfg.mix != "none" and cfg.k > len(sset):
        raise MudiError(f"--k {cfg.k} subjects per composite, but {cfg.subjects} has only {len(sset)} subjects.")
    if cfg.relative_sizes:
        for name in parse_relative_sizes(cfg.relative_sizes):
            sset.subject(name)
    classes = None
    if cfg.prior_dir:
        from mudi.train.priors import ClassSet

        cset = ClassSet.load(cfg.prior_dir)
        classes = (cset.for_subjects(sset), cset.class_names(sset))
    info = inspect_model(cfg.base)
    if cfg.vae and not (Path(cfg.vae) / "vae").is_dir():  # a VAE folder/hub id (or a pipeline's vae/)
        from mudi.models.loading import resolve_model

        resolve_model(cfg.vae, "vae")
    if info is not None:
        if cfg.resolution == 0:
            cfg = cfg.updated({"resolution": info.default_resolution})
        info.check_resolution(cfg.resolution)
        check_lora_targets(info.family.meta_denoiser(info.folder), cfg.target_modules, where=cfg.base)
    return cfg, sset, classes, info


def train(config: TrainConfig, *, pipeline=None, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Train a multi-subject LoRA; return the output folder (see the module docstring).

    Args:
        config: the run (see :class:`~mudi.train.config.TrainConfig`).
        pipeline: optional already-loaded SD/SDXL pipeline to train (its UNet receives the
            LoRA adapter); by default the base model is loaded from ``config.base``.
        on_step: called after every optimizer step with (step, log row).

    Raises:
        MudiError: a user mistake (reported before any heavy work where possible).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from mudi.compose import Composer, default_margin, loss_weight_map, parse_relative_sizes, plain
    from mudi.models.lora import KOHYA_WEIGHT_NAME, add_unet_lora, check_lora_targets, save_diffusers_lora, save_kohya_lora
    from mudi.models.loading import load_pipeline

    t_start = time.time()
    cfg, sset, classes, info = prepare_run(config)
    out = Path(cfg.out)

    # ------------------------------------------------------------ accelerator, device, precision
    device_req = _pick_device(cfg.device)
    if device_req.type == "cuda" and device_req.index is not None:
        torch.cuda.set_device(device_req.index)
    mp = _mixed_precision(cfg, device_req)
    _reset_accelerate_precision(mp)
    accelerator = Accelerator(mixed_precision=mp, cpu=device_req.type == "cpu", gradient_accumulation_steps=1)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)

    # ------------------------------------------------------------ model
    if pipeline is None:
        # frozen weights in the training dtype from the start (no fp32 copy of a large UNet in RAM)
        pipe = load_pipeline(cfg.base, dtype=weight_dtype, device="cpu", vae=cfg.vae or None)
    else:
        pipe = pipeline
    family = family_of(pipe)
    if info is None:  # hub model: check the resolution now that the configs are loaded
        info = family.info_of(pipe, cfg.base)
        if cfg.resolution == 0:
            cfg = cfg.updated({"resolution": info.default_resolution})
        info.check_resolution(cfg.resolution)
    check_lora_targets(pipe.unet, cfg.target_modules, where=cfg.base)
    S = cfg.resolution
    margin = cfg.segmix_margin if cfg.segmix_margin >= 0 else float(default_margin(S))
    relative = parse_relative_sizes(cfg.relative_sizes) if cfg.relative_sizes else None
    composer = Composer(sset, S, mix=cfg.mix, p=cfg.p, k=cfg.k, margin=margin, relative_sizes=relative)

    # resolved config, written before any training so a killed run can always be resumed
    resolved = cfg.updated({
        "subjects": _abs_if_local(cfg.subjects), "base": _abs_if_local(cfg.base),
        "prior_dir": _abs_if_local(cfg.prior_dir), "vae": _abs_if_local(cfg.vae),
        "mixed_precision": mp, "segmix_margin": margin,
        "resume": False, "overwrite": False, "stop_after": 0,
    })
    accelerator.wait_for_everyone()  # every process has validated OUT before the main one writes to it
    if accelerator.is_main_process:
        if not cfg.resume:
            prepare_output_dir(out, overwrite=cfg.overwrite, what="training output")
            if cfg.overwrite:  # a fresh start must not resume from the previous run's state
                shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
                (out / LOG_NAME).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / CONFIG_NAME, resolved.to_toml())
    accelerator.wait_for_everyone()

    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)

    unet, vae = pipe.unet, pipe.vae
    vae.requires_grad_(False)
    for enc in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
        if enc is not None:
            enc.requires_grad_(False).eval()
    # a VAE whose config asks for it (the SDXL base VAE: NaNs in fp16) runs in fp32, whoever chose it;
    # the fp16-fix VAE (force_upcast false) runs in the training dtype
    vae_dtype = torch.float32 if getattr(vae.config, "force_upcast", False) else weight_dtype
    _move(vae, device, vae_dtype).eval()
    _move(unet, device, weight_dtype)
    for name in ("text_encoder", "text_encoder_2"):
        enc = getattr(pipe, name, None)
        if enc is not None:
            _move(enc, device, weight_dtype)
    enc = None  # no stray reference: the text encoders must be freeable once the captions are cached
    pipe.set_progress_bar_config(disable=True)

    torch.manual_seed(cfg.seed)  # LoRA initialisation
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    params = add_unet_lora(unet, rank=cfg.rank, alpha=cfg.alpha, target_modules=cfg.target_modules,
                           dropout=cfg.lora_dropout)
    for p in params:
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = _make_optimizer(params, cfg)

    # ------------------------------------------------------------ caches
    run = RunState()
    text = TextCache(pipe, family, device, weight_dtype)
    captions = subject_captions(sset, cfg.k, cfg.mix)
    class_photos, class_names = classes if classes else (None, None)
    if class_photos is not None:
        captions += class_captions(class_photos, class_names, sset.keys, cfg.k, cfg.mix)
    val_prompts = [fill_subjects(v, sset) for v in cfg.validation_prompts] or default_validation_prompts(sset, cfg.k)
    complete = len(captions) <= MAX_PRECOMPUTED_CAPTIONS
    text.add((captions if complete else []) + val_prompts)
    text.add_uncond(cfg.validation_negative_prompt)
    run.text_encoder_calls_setup = text.calls
    run.captions_cached = len(text.cond)
    if complete:  # every caption is cached: the text encoders are not needed any more
        if pipeline is None:  # our own pipeline: drop them (validation uses the cached embeddings)
            text.close()
            for te in text.encoders():
                te.to("cpu")  # frees the GPU copy even if something else still holds the module
            te = None
            names = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
            pipe.register_modules(**{n: None for n in names if hasattr(pipe, n)})
            gc.collect()
        elif device.type != "cpu":
            for enc in text.encoders():
                enc.to("cpu")

    latents = LatentEncoder(vae, family, device)
    plain_examples = {}  # (key, index) -> plain Example (resize + crop done once)
    for s in sset:
        for i, ph in enumerate(sset.photos(s.key)):
            ex = plain(ph, S, ph.caption, key=s.key, photo_index=i)
            plain_examples[(s.key, i)] = ex
            latents.cached(("instance", s.key, i), ex.image)
    if class_photos is not None:
        for key, phs in class_photos.items():
            for i, ph in enumerate(phs):
                latents.cached(("class", class_names[key], i), plain(ph, S, ph.caption, key=key, photo_index=i).image)
    run.latents_cached = len(latents.cache)
    encodes_after_cache = latents.encodes

    # ------------------------------------------------------------ accelerate + resume
    unet, optimizer = accelerator.prepare(unet, optimizer)
    scaler = getattr(accelerator, "scaler", None)
    schedule = ExampleSchedule(sset, cfg.seed)
    start_step = 0
    if cfg.resume:
        ckpts = list_checkpoints(out)
        if ckpts:
            state = load_checkpoint(ckpts[-1][1], unet, optimizer, scaler=scaler)
            start_step = int(state["step"])
    run.start_step = start_step
    log_path = out / LOG_NAME
    if accelerator.is_main_process:
        rows = [r for r in _read_log(log_path) if r.get("step", 0) <= start_step]
        write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in rows))

    writer = None
    if accelerator.is_main_process:
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
        except Exception:
            writer = None

    world, rank = accelerator.num_processes, accelerator.process_index
    B, accum = cfg.train_batch_size, cfg.gradient_accumulation_steps
    use_prior = class_photos is not None and cfg.prior_weight > 0
    end_step = cfg.max_train_steps if not cfg.stop_after else min(cfg.max_train_steps, cfg.stop_after)

    def instance_example(key: str, idx: int, rng: np.random.Generator):
        """Composer.example, with the plain examples taken from the cache.

        Same random draws as Composer.example: one ``rng.random()`` decides (always drawn),
        then Composer.composite draws the rest for a composite.
        """
        if rng.random() < cfg.p and cfg.mix != "none":
            return composer.composite(key, idx, rng)
        return plain_examples[(key, idx)]

    def make_micro_batch(g: int):
        """Latents, captions and loss weights for micro-batch number g (global over processes)."""
        lat, caps, weights, kinds = [], [], [], []
        noise, ts = [], []
        for b in range(B):
            e = g * B + b
            key, idx = schedule.item(e)
            rng, gen = schedule.numpy_rng(e), schedule.torch_generator(e)
            ex = instance_example(key, idx, rng)
            pairs = [("instance", ex)]
            if use_prior:
                pairs.append(("class", composer.mix_like(class_photos, ex, rng, class_names=class_names)))
            for role, x in pairs:
                if x.kind == "plain":
                    pl = x.placements[0]
                    cache_key = ("instance", pl.key, pl.photo) if role == "instance" else ("class", class_names[pl.key], pl.photo)
                    dist = latents.cached(cache_key, x.image)
                else:
                    dist = latents.distribution(x.image)
                z = latents.sample(dist, gen)
                lat.append((role, z))
                caps.append(x.caption)
                kinds.append(x.kind)
                if role == "instance" and cfg.loss_alpha < 1.0:
                    w = loss_weight_map(x.mask, cfg.loss_alpha, tuple(z.shape[-2:]))
                    weights.append(torch.from_numpy(w)[None, None])
                noise.append(torch.randn(z.shape, generator=gen, dtype=torch.float32))
                ts.append(torch.randint(0, num_train_timesteps, (1,), generator=gen))
        return lat, caps, weights, kinds, noise, ts

    data_time = [0.0]

    def micro_step(g: int, sync: bool) -> tuple[float, float, list[str]]:
        t_data = time.perf_counter()
        lat, caps, weights, kinds, noise, ts = make_micro_batch(g)
        data_time[0] += time.perf_counter() - t_data
        x0 = torch.cat([z for _, z in lat]).to(device)
        eps = torch.cat(noise).to(device)
        t = torch.cat(ts).to(device)
        noisy = noise_scheduler.add_noise(x0, eps, t)
        target = family.training_target(noise_scheduler, x0, eps, t)
        calls_before = text.calls
        embeds = text.get(caps)
        run.text_encoder_calls_training += text.calls - calls_before
        ctx = accelerator.no_sync(unet) if (not sync and world > 1) else _nullcontext()
        with ctx:
            with accelerator.autocast():
                pred = family.denoise(unet, noisy.to(weight_dtype), t, embeds, S)
            err = (pred.float() - target.float()) ** 2
            roles = [r for r, _ in lat]
            inst = torch.tensor([r == "instance" for r in roles], device=device)
            if weights:
                w = torch.cat(weights).to(device)
                loss_inst = (err[inst] * w).mean()
            else:
                loss_inst = err[inst].mean()
            loss = loss_inst
            loss_prior = torch.zeros((), device=device)
            if use_prior:
                loss_prior = err[~inst].mean()
                loss = loss + cfg.prior_weight * loss_prior
            accelerator.backward(loss / accum)
        return float(loss_inst.detach()), float(loss_prior.detach()), kinds

    def validate(step: int) -> None:
        from mudi import viz

        if not accelerator.is_main_process:
            return
        base_unet = accelerator.unwrap_model(unet)
        base_unet.eval()
        images, labels = [], []
        calls_before = text.calls
        try:
            with torch.no_grad():
                for pi, prompt in enumerate(val_prompts):
                    n = cfg.validation_images
                    gens = [torch.Generator("cpu").manual_seed(cfg.seed + 1000 * pi + j) for j in range(n)]
                    kw = family.pipeline_embeds(text.get([prompt]).repeat(n), text.uncond.repeat(n))
                    with accelerator.autocast():  # the UNet only: see _decode_latents for the VAE
                        res = pipe(**kw, num_inference_steps=cfg.validation_inference_steps, output_type="latent",
                                   guidance_scale=cfg.validation_guidance_scale, height=S, width=S, generator=gens)
                    images.extend(_decode_latents(pipe, family, res.images))
                    labels.extend([prompt] * n)
        finally:
            base_unet.train()
        run.text_encoder_calls_training += text.calls - calls_before
        sheet = viz.grid(images, labels=labels, cols=cfg.validation_images, cell=min(256, max(128, S)))
        save_image_atomic(sheet, out / "validation" / f"step_{step:06d}.png")

    # ------------------------------------------------------------ loop
    bar = tqdm(total=cfg.max_train_steps, initial=start_step, desc="mudi train", unit="step",
               disable=not (cfg.progress and accelerator.is_main_process), dynamic_ncols=True)
    if accelerator.is_main_process and start_step == 0 and cfg.validate_every > 0:
        validate(0)
    log_fh = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    try:
        for step in range(start_step, end_step):
            t0, c0 = time.perf_counter(), time.process_time()
            data_time[0] = 0.0
            lr = cfg.learning_rate * lr_factor(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            li = lp = 0.0
            kinds: list[str] = []
            for j in range(accum):
                g = (step * world + rank) * accum + j
                a, b, k = micro_step(g, sync=j == accum - 1)
                li += a / accum
                lp += b / accum
                kinds += k
            if world > 1:  # log the mean over processes
                li, lp = (float(v) for v in accelerator.reduce(torch.tensor([li, lp], device=device), "mean"))
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            run.step_times.append(dt)
            run.step = done
            loss = li + (cfg.prior_weight * lp if use_prior else 0.0)
            row = {"step": done, "loss": loss, "loss_instance": li, "lr": lr,
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "time": round(time.time() - t_start, 4), "step_time": round(dt, 4),
                   "step_cpu_time": round(cpu, 4), "data_time": round(data_time[0], 4),
                   "kinds": kinds, "text_encoder_calls": run.text_encoder_calls_training}
            if use_prior:
                row["loss_prior"] = lp
            if log_fh and (done % cfg.log_every == 0 or done == end_step):
                log_fh.write(json.dumps(row) + "\n")
                log_fh.flush()
            if writer is not None:
                writer.add_scalar("loss", loss, done)
                writer.add_scalar("lr", lr, done)
                if use_prior:
                    writer.add_scalar("loss_prior", lp, done)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(done, row)
            final = done == end_step
            if accelerator.is_main_process and (
                final or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
            ):
                save_checkpoint(out, done, unet, optimizer, scaler=scaler,
                                sampler=schedule.state((done * world) * accum * B), keep=cfg.keep_checkpoints,
                                extra={"config": resolved.to_dict()},
                                export=lambda d: save_diffusers_lora(type(pipe), accelerator.unwrap_model(unet), d))
            if cfg.validate_every > 0 and done % cfg.validate_every == 0 and done != cfg.max_train_steps:
                validate(done)
                if log_fh:
                    write_loss_plot(log_path, out / "loss.png")
            accelerator.wait_for_everyone()
    finally:
        bar.close()
        if log_fh:
            log_fh.close()
    run.vae_encodes_training = latents.encodes - encodes_after_cache
    text.close()

    # ------------------------------------------------------------ outputs
    finished = run.step == cfg.max_train_steps or start_step >= cfg.max_train_steps
    if accelerator.is_main_process:
        if finished:
            unwrapped = accelerator.unwrap_model(unet)
            save_diffusers_lora(type(pipe), unwrapped, out)
            save_kohya_lora(unwrapped, out / KOHYA_WEIGHT_NAME, alpha=cfg.alpha, base=cfg.base, family=family)
            if cfg.validate_every >= 0:
                validate(cfg.max_train_steps)
        write_loss_plot(log_path, out / "loss.png")
        times = run.step_times[1:] or run.step_times
        summary = {
            "finished": finished,
            "step": max(run.step, start_step),
            "max_train_steps": cfg.max_train_steps,
            "resumed_from": start_step,
            "model": family.name,
            "resolution": S,
            "mixed_precision": mp,
            "device": str(device),
            "processes": world,
            "prediction_type": prediction_type,
            "captions_cached": run.captions_cached,
            "latents_cached": run.latents_cached,
            "text_encoder_calls_setup": run.text_encoder_calls_setup,
            "text_encoder_calls_training": run.text_encoder_calls_training,
            "text_encoder_calls_per_step": run.text_encoder_calls_training / max(1, len(run.step_times)),
            "vae_encodes_training": run.vae_encodes_training,
            "mean_step_time_s": float(np.mean(times)) if times else None,
            "wall_time_s": round(time.time() - t_start, 3),
        }
        write_json_atomic(out / SUMMARY_NAME, summary)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _reset_accelerate_precision(mp: str) -> None:
    """Allow several runs with different precision in one Python process (notebooks, tests).

    accelerate keeps its state in a process-wide singleton; only its mixed-precision part is
    reset here (the distributed state set up by ``accelerate launch`` is kept).
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mp) != mp:
        AcceleratorState._reset_state(reset_partial_state=False)


@torch.no_grad()
def _decode_latents(pipe, family, latents: torch.Tensor) -> list:
    """Validation latents -> PIL images, decoded outside autocast in the VAE's own dtype.

    Under fp16 autocast the SDXL base VAE (kept in fp32 because its config says
    ``force_upcast``) would run its convolutions in fp16, overflow and give black images.
    """
    vae = pipe.vae
    param = next(vae.parameters())
    z = family.from_latents(vae, latents.to(param.device, param.dtype))
    images = []
    for i in range(z.shape[0]):  # one at a time: a 1024 px fp32 decode of a batch is several GB
        image = vae.decode(z[i : i + 1], return_dict=False)[0]
        images.extend(pipe.image_processor.postprocess(image.float(), output_type="pil"))
    return images


def _move(module, device: torch.device, dtype: torch.dtype):
    """Move a module; cast only when the dtype really changes (avoids diffusers' upcast warnings)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    return module


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


__all__ = [
    "ExampleSchedule",
    "TrainConfig",
    "TextCache",
    "default_validation_prompts",
    "inspect_model",
    "list_checkpoints",
    "load_checkpoint",
    "prepare_run",
    "save_checkpoint",
    "subject_captions",
    "train",
    "write_loss_plot",
]

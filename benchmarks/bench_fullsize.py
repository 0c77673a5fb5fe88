"""Full-size models: time and peak memory of `mudi train`, `mudi generate` and `mudi evaluate`.

    python benchmarks/bench_fullsize.py --device cuda                   # the real sizes (GPU)
    python benchmarks/bench_fullsize.py --device cpu --scale reduced    # same code paths, CPU-sized
    python benchmarks/bench_fullsize.py --memory-model                  # the memory model only (< 1 min)

1. **Memory model.** Parameter counts of every part at full size (SDXL and SD 1.5 UNet, VAE,
   text encoders; OWLv2-B/16, SAM ViT-H, DINOv2-B, CLIP-L) and of the rank-32 LoRA, counted on
   the meta device from the configs in ``fullsize_models.py``, and what they cost in bytes
   (weights in fp16; LoRA weights, gradients and AdamW's two moments in fp32 = 16 bytes per
   LoRA parameter). UNet activations at the native resolution are estimated on the meta device
   by ``activation_model.py`` (bytes kept for the backward pass, with and without gradient
   checkpointing, batch 1 and 2), and the expected VRAM of each training setting is their sum.
2. **Models.** Random-weight (seeded) folders of every part at ``--scale`` (``full``: the
   published configs; ``reduced``: same classes and block layout, narrower and shallower, lower
   resolution; ``tiny``: a smoke test), written with ``save_pretrained`` into ``--work``.
3. **Measurements**, each through the `mudi` CLI (``mudi.cli.main``) in its own subprocess so
   peaks do not mix, one printed line each:

   - ``mudi train`` at the scale's resolution for SDXL and SD 1.5, gradient checkpointing off/on
     x prior preservation off/on (a class set made from the example photos): ``s/step`` is the
     median of mudi's own ``step_time`` log field after the warm-up steps;
   - ``mudi generate`` with the trained LoRA, ``--init mudi`` and ``--init none``: ``s/image``
     from the write times of consecutive images (model loading and the first image excluded);
   - ``mudi evaluate`` (OWLv2 + DINOv2 + CLIP score) on copies of the generated images:
     ``images/s`` from the evaluation's own ``seconds`` (model loading excluded).

   ``peak`` is ``torch.cuda.max_memory_allocated`` on CUDA (reset per subprocess) and the peak
   resident set size of the subprocess on CPU (``ru_maxrss``; "above imports" subtracts the RSS
   measured after importing torch/diffusers/transformers/peft/mudi).

On CPU the numbers are about code paths and ratios, not absolute speed: the reduced models have
20-55x fewer parameters than the real ones, and CPU memory is not GPU memory (no CUDA caching
allocator, fp32 everywhere because mixed precision is off on CPU). Each CPU measurement uses one
thread by default (``--threads``): on a machine shared with other jobs, several threads per
process mostly wait for each other on these small operations.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fullsize_models as fm  # noqa: E402
from bench_train import rss_kb  # noqa: E402

SUBJECTS = HERE.parent / "examples" / "subjects" / "dog6_and_dog2"
PROMPT = "a photo of olis corgi and hta chow chow in a garden"
RESULT_TAG = "@@bench_fullsize "
GB = 1e9

#: METHOD.md's LoRA (rank 32 on the attention projections): what the LoRA counts assume.
LORA_RANK = 32
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class Plan:
    """How much work one ``--scale`` does: training steps, sampling steps, images."""

    train_steps: int
    warmup: int
    sample_steps: int
    images: int
    eval_images: int


PLANS = {
    "full": Plan(train_steps=8, warmup=2, sample_steps=30, images=4, eval_images=16),
    "reduced": Plan(train_steps=4, warmup=1, sample_steps=6, images=3, eval_images=6),
    "tiny": Plan(train_steps=2, warmup=1, sample_steps=2, images=2, eval_images=2),
}


# ----------------------------------------------------------------------------- child side


def child(argv: list[str]) -> None:
    """Run ``mudi.cli.main(argv)`` and print its exit code, wall time and peak memory as JSON."""
    import resource

    import torch
    import diffusers  # noqa: F401  (imported up front: the RSS baseline excludes import overhead)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from mudi.cli import main

    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    cuda = torch.device(device) if device.startswith("cuda") else None
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)
    before = rss_kb()
    t0 = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t0
    result = {"rc": rc, "wall": wall, "rss_before_kb": before,
              "peak_rss_kb": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}
    if cuda is not None:
        result["cuda_peak"] = torch.cuda.max_memory_allocated(cuda)
        result["cuda_reserved"] = torch.cuda.max_memory_reserved(cuda)
    print(RESULT_TAG + json.dumps(result), flush=True)


def build_child(folder: str, scale: str, device: str) -> None:
    """Write the model folders (weights fp16 at full size, else fp32); print the device name."""
    import torch

    dtype = torch.float16 if scale == "full" else torch.float32
    fm.build(Path(folder), scale, device=device, dtype=dtype)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    print(RESULT_TAG + json.dumps({"rc": 0, "device_name": name, "dtype": str(dtype).replace("torch.", ""),
                                   "torch": torch.__version__}), flush=True)


# ----------------------------------------------------------------------------- parent side


def run_child(argv: list[str], log: Path, mode: str = "--child", threads: int = 0) -> dict:
    """Run one measurement (or the model build) in a fresh interpreter; its output goes to ``log``.
    ``threads`` > 0 limits the CPU threads of torch in the child."""
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(argv)]
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    fh_text = proc.stdout
    Path(log).open("a").write(fh_text)
    for line in fh_text.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            if result["rc"] == 0:
                return result
    lines = [ln for ln in Path(log).read_text().splitlines() if ln.strip() and not ln.startswith(RESULT_TAG)]
    errors = [ln for ln in lines if "error" in ln.lower()]
    why = (errors or lines or ["(no output)"])[-1]
    return {"error": f"failed: {why[:240]} (see {log})"}


def peak_text(result: dict) -> str:
    """``peak X GB`` in the unit the device reports."""
    if "cuda_peak" in result:
        return (f"peak {result['cuda_peak'] / GB:.2f} GB allocated "
                f"({result['cuda_reserved'] / GB:.2f} GB reserved)")
    peak, before = result["peak_rss_kb"] * 1e3, result["rss_before_kb"] * 1e3
    return f"peak {peak / GB:.2f} GB RSS ({(peak - before) / GB:.2f} GB above imports)"


def report(label: str, result: dict, figure: str) -> None:
    """Print one measurement line (or why it failed)."""
    if "error" in result:
        print(f"{label:44s}  {result['error']}", flush=True)
    else:
        print(f"{label:44s}  {figure:>16s}  {peak_text(result)}", flush=True)


def train_step_time(out: Path, warmup: int) -> float:
    """Median ``step_time`` of mudi's training log after ``warmup`` steps."""
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines() if ln.strip()]
    times = [r["step_time"] for r in rows if "step_time" in r]
    return statistics.median(times[warmup:] or times)


def image_interval(folder: Path) -> float:
    """Seconds between consecutive images of a `mudi generate` folder (first image excluded)."""
    stamps = sorted(p.stat().st_mtime for p in folder.glob("[0-9][0-9][0-9][0-9].png"))
    if len(stamps) < 2:
        raise RuntimeError(f"{folder}: fewer than 2 images")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def find_key(data, key: str):
    """The first value of ``key`` anywhere in nested JSON ``data`` (None if absent)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        data = list(data.values())
    if isinstance(data, list):
        for item in data:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


# ----------------------------------------------------------------------------- memory model


def memory_model() -> None:
    """Print parameter counts at full size and the bytes they cost (weights, LoRA training state)."""
    counts = fm.parameter_counts("full", LORA_RANK, LORA_TARGETS)
    print(f"memory model (full size; parameters counted on the meta device; LoRA rank {LORA_RANK} on "
          f"{', '.join(LORA_TARGETS)}):")
    for part, modules in counts.items():
        for module, n in modules.items():
            if module == "lora":
                cost = f"fp32 weights {4 * n / GB:.3f} GB + grads {4 * n / GB:.3f} + AdamW m,v {8 * n / GB:.3f} " \
                       f"= {16 * n / GB:.3f} GB"
            else:
                cost = f"fp16 {2 * n / GB:.3f} GB, fp32 {4 * n / GB:.3f} GB"
            print(f"  params {part:6s} {module:14s} {n / 1e6:9.2f} M   {cost}")
    from activation_model import print_activation_estimates

    activations = print_activation_estimates(LORA_RANK, LORA_TARGETS)
    for part in fm.PIPELINES:
        print_training_vram(part, counts[part], activations)


def print_training_vram(part: str, c: dict[str, int], activations: dict) -> None:
    """Expected VRAM of a training step per setting: frozen UNet fp16 + VAE (fp32 when the config
    says force_upcast, as mudi keeps it) + LoRA training state + estimated activations."""
    vae_bytes = 4 if fm.config("full", part)["vae"].get("force_upcast") else 2
    fixed = 2 * c["unet"] + vae_bytes * c["vae"] + 16 * c["lora"]
    res = fm.config("full", part)["resolution"]
    print(f"  expected VRAM {part} {res}px training: fixed {fixed / GB:.2f} GB = UNet fp16 {2 * c['unet'] / GB:.2f} + "
          f"VAE fp{8 * vae_bytes} {vae_bytes * c['vae'] / GB:.2f} + LoRA state {16 * c['lora'] / GB:.2f}; text "
          f"encoders fp16 +{2 * sum(v for k, v in c.items() if k.startswith('text')) / GB:.2f} while captions are cached")
    for checkpointing in (False, True):
        for priors in (False, True):
            act = activations[part, 2 if priors else 1]["checkpointed" if checkpointing else "plain"]
            print(f"  expected VRAM {part} {res}px gc={'on ' if checkpointing else 'off'} "
                  f"priors={'on ' if priors else 'off'}: {fixed / GB:.2f} + activations {act / GB:.2f} "
                  f"= {(fixed + act) / GB:.2f} GB", flush=True)


# ----------------------------------------------------------------------------- measurements


@dataclass
class Bench:
    """Everything the measurements share: models, data, device, scale, output folder."""

    work: Path
    scale: str
    device: str
    models: dict[str, Path]
    class_set: Path
    plan: Plan
    train_options: dict[str, argparse.Action]
    threads: int = 0
    figures: dict = field(default_factory=dict)  # (what, family, setting) -> seconds per step / image

    def run(self, argv: list[str], name: str) -> dict:
        """Run ``mudi ARGV`` in a subprocess (log: ``work/runs/NAME.log``)."""
        return run_child(argv, self.work / "runs" / f"{name}.log", threads=self.threads)

    def resolution(self, family: str) -> int:
        """The scale's training/sampling resolution of ``family``."""
        return fm.config(self.scale, family)["resolution"]

    def fresh(self, name: str) -> Path:
        """An empty output folder ``work/runs/name`` and the path of its log."""
        out = self.work / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out


def cli_options(verb: str) -> dict[str, argparse.Action]:
    """The options `mudi VERB` accepts, by option string (read from mudi's own parser)."""
    from mudi.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s: action for action in sub.choices[verb]._actions for s in action.option_strings}


def checkpointing_flags(on: bool, options: dict[str, argparse.Action]) -> list[str]:
    """Flags that switch gradient checkpointing explicitly on or off (never "auto"), in the
    form `mudi train` takes: ``--gradient-checkpointing on|off``, else the boolean switch."""
    action = options.get("--gradient-checkpointing")
    if action is not None and action.choices and {"on", "off"} <= set(action.choices):
        return ["--gradient-checkpointing", "on" if on else "off"]
    if on:
        return ["--gradient-checkpointing"]
    return ["--no-gradient-checkpointing"] if "--no-gradient-checkpointing" in options else []


def make_class_set(subjects: Path, out: Path) -> Path:
    """A prior-preservation class set (the `mudi priors` folder format) made of the subject
    photos themselves: timing and memory do not depend on what the class images show."""
    lines = [json.loads(ln) for ln in (subjects / "metadata.jsonl").read_text().splitlines() if ln.strip()]
    classes = {key: phrase.split(None, 1)[1] for key, phrase in lines[0]["id"].items()}
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = [{"classes": classes, "prompt": "a photo of a {cls}", "base": "bench", "threshold": 0.4}]
    for rec in lines[1:]:
        cls = classes[rec["id"]]
        shutil.copy(subjects / rec["file_name"], out / rec["file_name"])
        shutil.copy(subjects / rec["mask_path"], out / rec["mask_path"])
        records.append({"class": cls, "file_name": rec["file_name"], "mask_path": rec["mask_path"],
                        "text": f"a photo of a {cls}"})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def measure_train(b: Bench, family: str, checkpointing: bool, priors: bool) -> Path:
    """One `mudi train` run; prints s/step and peak memory; returns its output folder."""
    name = f"train_{family}_gc{int(checkpointing)}_priors{int(priors)}"
    out = b.fresh(name)
    res = b.resolution(family)
    argv = ["train", "--subjects", str(SUBJECTS), "--base", str(b.models[family]), "--out", str(out),
            "--steps", str(b.plan.train_steps), "--resolution", str(res), "--checkpoint-every", "0",
            "--validate-every", "-1", "--seed", "0", "--device", b.device, "--no-progress"]
    argv += checkpointing_flags(checkpointing, b.train_options)
    # priors=off rows train without regularization (--reg none), as they did before DCO became the
    # default: the rows compare prior preservation with plain DreamBooth-LoRA.
    argv += ["--prior-dir", str(b.class_set)] if priors else ["--reg", "none"]
    result = b.run(argv, name)
    figure = ""
    if "error" not in result:
        b.figures["train", family, (checkpointing, priors)] = seconds = train_step_time(out, b.plan.warmup)
        figure = f"{seconds:.3f} s/step"
        used = find_key(json.loads((out / "summary.json").read_text()), "gradient_checkpointing")
        if used is not None and bool(used) != checkpointing:
            result = {"error": f"mudi train ran with gradient checkpointing {'on' if used else 'off'}, "
                               f"not as asked ({figure})"}
    label = (f"train    {family:4s} {res:4d}px gc={'on ' if checkpointing else 'off'} "
             f"priors={'on ' if priors else 'off'} batch {2 if priors else 1}x2")
    report(label, result, figure)
    return out


def measure_generate(b: Bench, family: str, lora: Path, init: str) -> Path:
    """One `mudi generate` run with the trained LoRA; prints s/image and peak memory."""
    name = f"generate_{family}_{init}"
    out = b.fresh(name)
    res = b.resolution(family)
    argv = ["generate", "--base", str(b.models[family]), "--lora", str(lora), "--subjects", str(SUBJECTS),
            "--prompt", PROMPT, "--n", str(b.plan.images), "--steps", str(b.plan.sample_steps),
            "--resolution", str(res), "--seed", "0", "--init", init, "--device", b.device, "--out", str(out),
            "--no-progress"]
    result = b.run(argv, name)
    figure = ""
    if "error" not in result:
        b.figures["generate", family, init] = seconds = image_interval(out)
        figure = f"{seconds:.3f} s/image"
    report(f"generate {family:4s} {res:4d}px init={init:4s} {b.plan.sample_steps} steps cfg 7.5", result, figure)
    return out


def measure_evaluate(b: Bench, sources: list[Path]) -> None:
    """`mudi evaluate` (OWLv2 + DINOv2 + CLIP) on copies of generated images; prints images/s."""
    images = b.fresh("evaluate_images")
    images.mkdir()
    pngs = [p for src in sources for p in sorted(src.glob("[0-9][0-9][0-9][0-9].png"))]
    if not pngs:
        print("evaluate: no generated images to evaluate", flush=True)
        return
    for i in range(b.plan.eval_images):
        src = pngs[i % len(pngs)]
        shutil.copy(src, images / f"{i:04d}.png")
        shutil.copy(src.with_suffix(".json"), images / f"{i:04d}.json")
    out = b.fresh("evaluate")
    argv = ["evaluate", "--images", str(images), "--subjects", str(SUBJECTS), "--detector", str(b.models["owlv2"]),
            "--embedder", str(b.models["dinov2"]), "--clip", str(b.models["clip"]), "--device", b.device,
            "--out", str(out)]
    result = b.run(argv, "evaluate")
    figure = ""
    if "error" not in result:
        seconds = find_key(json.loads((out / "scores.json").read_text()), "seconds")
        figure = f"{b.plan.eval_images / (seconds or result['wall']):.2f} images/s"
        if not seconds:
            figure += " (incl. load)"
    report(f"evaluate owlv2+dinov2+clip {b.plan.eval_images} images", result, figure)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--scale", choices=fm.SCALES, default=None,
                   help="model sizes (default: full on CUDA, reduced on CPU)")
    p.add_argument("--families", default=",".join(fm.PIPELINES), help="pipelines to measure (default sdxl,sd15)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for models and runs (kept; models are reused); default: a temporary folder")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per measurement on --device cpu (default 1: robust on a shared machine; "
                        "0 = torch's default)")
    p.add_argument("--memory-model", action="store_true", help="print the memory model only")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--build-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_bench(args: argparse.Namespace, work: Path) -> Bench:
    """Write the models (in a subprocess: the parent never holds GPU memory) and the class set."""
    scale = args.scale or ("full" if args.device.startswith("cuda") else "reduced")
    folder = work / f"models_{scale}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    built = run_child([str(folder), scale, args.device], work / f"models_{scale}.log", mode="--build-child")
    if "error" in built:
        raise SystemExit(f"bench_fullsize: building the models {built['error']}")
    print(f"models ({scale}, weights {built['dtype']}) in {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    threads = "" if args.device.startswith("cuda") else f"; {args.threads or 'default'} CPU thread(s) per measurement"
    print(f"device {args.device} ({built['device_name']}); torch {built['torch']}; scale {scale}{threads}", flush=True)
    if scale != "full":
        print(fm.REDUCED_NOTE if scale == "reduced" else fm.TINY_NOTE, flush=True)
    counts = fm.parameter_counts(scale, LORA_RANK, LORA_TARGETS)
    print("parameters at this scale: " + ", ".join(f"{part} {sum(c.values()) / 1e6:.1f} M"
                                                   for part, c in counts.items()), flush=True)
    return Bench(work=work, scale=scale, device=args.device, models={p: folder / p for p in fm.PARTS},
                 class_set=make_class_set(SUBJECTS, work / "class_set"), plan=PLANS[scale],
                 train_options=cli_options("train"), threads=0 if args.device.startswith("cuda") else args.threads)


def run_all(b: Bench, families: list[str]) -> None:
    """Training (2 x 2 settings per family), generation with/without init, evaluation."""
    generated = []
    for family in families:
        runs = {(gc, pr): measure_train(b, family, gc, pr) for gc in (False, True) for pr in (False, True)}
        lora = runs[(False, False)]
        for init in ("mudi", "none"):
            generated.append(measure_generate(b, family, lora, init))
    measure_evaluate(b, generated)
    print_ratios(b.figures, families)


def print_ratios(figures: dict, families: list[str]) -> None:
    """Time ratios of the settings (what the CPU run is good for): checkpointing, priors, init."""
    pairs = {"gradient checkpointing": (("train", (True, False)), ("train", (False, False))),
             "priors": (("train", (False, True)), ("train", (False, False))),
             "checkpointing + priors": (("train", (True, True)), ("train", (False, False))),
             "init mudi vs none": (("generate", "mudi"), ("generate", "none"))}
    for family in families:
        parts = []
        for name, ((what, a), (_, b)) in pairs.items():
            if (what, family, a) in figures and (what, family, b) in figures:
                parts.append(f"{name} x{figures[what, family, a] / figures[what, family, b]:.2f}")
        if parts:
            print(f"time ratios {family}: " + ", ".join(parts), flush=True)


def check_args(device: str, families: list[str]) -> str | None:
    """What is wrong with ``--device`` / ``--families`` (None if nothing), before any work."""
    unknown = [f for f in families if f not in fm.PIPELINES]
    if unknown or not families:
        return f"--families {','.join(families)}: choose from {', '.join(fm.PIPELINES)}"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"--device {device}: CUDA is not available here; use --device cpu --scale reduced"
    elif device != "cpu":
        return f"--device {device}: use cuda, cuda:N or cpu"
    return None


def main(argv: list[str] | None = None) -> int:
    """Print the memory model, build the models, run and print every measurement."""
    args = parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.build_child:
        build_child(*json.loads(args.build_child))
        return 0
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    problem = None if args.memory_model else check_args(args.device, families)
    if problem:
        print(f"bench_fullsize: {problem}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    memory_model()
    if args.memory_model:
        return 0
    with tempfile.TemporaryDirectory(prefix="mudi-bench-") as tmp:
        work = args.work or Path(tmp)
        bench = build_bench(args, work)
        run_all(bench, families)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

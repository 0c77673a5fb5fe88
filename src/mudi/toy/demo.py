"""`mudi demo`: the whole MuDI pipeline, offline, on a CPU, in minutes.

It uses the toy world shipped with mudi (:mod:`mudi.toy`): a small text-to-image base model
trained in-house on procedural scenes, two *similar* personal subjects of the same class that
differ only in their markings (the "two similar dogs" case), and a toy detector and embedder
with the OWLv2 / DINOv2 interfaces, so Detect-and-Compare runs unchanged.

Stages (each in its own folder under OUT, each skipped on ``--resume`` once complete):

1. ``subjects/``  -- the toy subject set, imported with :func:`mudi.prepare.import_subjects`
   (contact sheet included);
2. ``lora_none/``, ``lora_cutmix/``, ``lora_segmix/`` -- one LoRA per training mode
   (DreamBooth, Cut-Mix, Seg-Mix), same seed, steps and schedule, so they compare fairly; the
   extension rows' ``lora_merged/``, ``lora_merged_segmix/`` (demo_modular.py) and
   ``lora_iterative/`` (demo_iterative.py) build on them;
3. ``gen/<method>/`` -- images for the demo prompts, with and without mean-shifted
   initialization (same seeds across methods);
4. ``eval/<method>/`` -- `mudi evaluate` outputs (D&C with the toy detector/embedder);
5. ``report.html`` and ``summary.json`` -- the comparison.

The numbers are whatever the runs give; nothing is tuned per method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

from mudi.errors import MudiError
from mudi.runtime import quiet_libraries
from mudi.settings import RunOptions, Settings, setting
from mudi.io import claim_output_dir, write_json_atomic, write_text_atomic
from mudi.toy.demo_report import demo_summary, render_demo_report
from mudi.toy.world import MAX_SUBJECTS as MAX_TOY_SUBJECTS

#: Success threshold for D&C with the toy detector and embedder. The toy embedder scores blurred
#: objects lower than sharp ones: renders of both subjects passed through the toy model's VAE
#: (a perfect image at the model's fidelity) score a median D&C of 0.84, and 80 % of them reach
#: 0.7 (60 % reach the paper's 0.8); pairs with one identity drawn twice (both striped or both
#: dotted) reach at most 0.53. benchmarks/toy_dnc_calibration.py prints these figures.
TOY_SUCCESS_THRESHOLD = 0.7

DONE = ".done"
T = TypeVar("T")


@dataclass(frozen=True)
class Method:
    """One row of the comparison: which LoRA (training mix) and which initialization."""

    name: str
    mix: str  # none | cutmix | segmix | merged | merged_segmix | iterative | base (no LoRA)
    init: str  # none | mudi
    description: str


#: The ``mix`` of a row that samples the base model itself (no LoRA is trained or loaded).
BASE_ONLY = "base"

METHODS: tuple[Method, ...] = (
    Method("dreambooth", "none", "none", "DreamBooth LoRA (no composites), standard noise"),
    Method("cutmix", "cutmix", "none", "Cut-Mix LoRA (whole photos stitched), standard noise"),
    Method("segmix", "segmix", "none", "Seg-Mix LoRA, standard noise (ablation: no initialization)"),
    Method("init_only", BASE_ONLY, "mudi", "Control: the base model, no LoRA, + mean-shifted initialization (what "
                                          "the subjects' photos pasted into the starting noise do on their own)"),
    Method("dreambooth_init", "none", "mudi", "DreamBooth LoRA + mean-shifted initialization (ablation)"),
    Method("mudi", "segmix", "mudi", "MuDI: Seg-Mix LoRA + mean-shifted initialization"),
    Method("modular", "merged", "mudi", "Modular: one DreamBooth LoRA per subject, merged (ranks stacked), "
                                        "+ mean-shifted initialization"),
    Method("modular_segmix", "merged_segmix", "mudi", "Modular + a short Seg-Mix fine-tune of the merged LoRA "
                                                      "(a fifth of the steps), + mean-shifted initialization"),
    Method("mudi_iterative", "iterative", "mudi", "MuDI + one round of iterative training: the mudi row's LoRA "
           "draws round images for the demo prompts at seeds from seed + 1000 on (never the evaluation images' "
           "seeds), D&C keeps the successes, a Seg-Mix fine-tune (a fifth of the steps) adds them; "
           "+ mean-shifted initialization"),
)
#: The methods a plain `mudi demo` runs: all of them (the paper's five, then its extensions).
DEFAULT_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS)


@dataclass
class DemoConfig(Settings):
    """Settings of a demo run; the defaults finish in under 10 minutes on a 2-core CPU.

    Generation settings were measured on the toy model (see the README's demo section and
    benchmarks/toy_demo_sweep.py): classifier-free guidance makes the toy LoRAs widen and merge
    the two subjects into one blob; a stronger initialization (γ 5) keeps them apart. The layout is
    METHOD's (each box fills 0.8 of its slot). The same settings are used for every method. The success
    threshold is calibrated for the toy embedder (benchmarks/toy_dnc_calibration.py); the paper's
    0.8 belongs to OWLv2 + DINOv2.
    """

    SECTION: ClassVar[str] = "demo"

    out: str = setting("mudi-demo", "output folder")
    seed: int = setting(0, "seed for everything (same seed, same numbers)")
    subjects: int = setting(2, "number of similar toy subjects (2, 3 or 4); every prompt and composite shows all of them")
    base: str = setting("", "toy-world base model folder (default: the one shipped with mudi)")
    train_steps: int = setting(500, "optimizer steps per LoRA")
    rank: int = setting(8, "LoRA rank")
    learning_rate: float = setting(4e-3, "learning rate", flag="--lr")
    p: float = setting(0.6, "Seg-Mix / Cut-Mix probability (0.6 here, METHOD's 0.3 elsewhere: every demo prompt asks "
                            "for all subjects together, and at 0.3 Seg-Mix added little over DreamBooth + initialization)")
    segmix_margin: float = setting(
        -1.0, "Seg-Mix margin in px (-1 = automatic: Seg-Mix's own S/8 for 2 subjects, 2 px for 3-4, whose "
              "slots are narrow at 64 px)")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    images_per_prompt: int = setting(8, "images per prompt and method")
    steps: int = setting(20, "sampling steps")
    guidance: float = setting(1.0, "classifier-free guidance scale")
    gamma: float = setting(5.0, "initialization strength γ")
    fill: float = setting(0.8, "initialization layout: each subject's box fills this fraction of its slot "
                               "(METHOD's 0.8, as in mudi generate)")
    success_threshold: float = setting(
        TOY_SUCCESS_THRESHOLD, "D&C at or above which an image with the right count is a success (toy embedder)")
    full: bool = setting(False, "also the curves (success rate vs number of subjects, mean D&C vs γ) and the comparison "
                                "repeated over 3 seeds with its spread (about 15 CPU-minutes; see demo_full.py)")
    reg: str = setting("dco", "regularization of every LoRA (mudi train --reg): dco = the product default without "
                              "a class set (the reference trainer's), none = unregularized (the old default)",
                       choices=("dco", "none"))
    methods: list[str] = setting(list(DEFAULT_METHODS), "comma-separated methods (default: all)",
                                 separator=",")

    def check(self) -> None:
        known = {m.name for m in METHODS}
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise MudiError(f"unknown demo method(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}.")
        if self.full and not {"dreambooth", "mudi"} <= set(self.methods):
            raise MudiError("--full draws DreamBooth vs MuDI curves: keep dreambooth and mudi in --methods.")
        if not 2 <= self.subjects <= MAX_TOY_SUBJECTS:
            raise MudiError(f"--subjects must be 2, 3 or 4: the toy world has {MAX_TOY_SUBJECTS} similar subjects "
                            f"(got {self.subjects}).")
        if self.segmix_margin < 0 and self.segmix_margin != -1:
            raise MudiError(f"--segmix-margin must be >= 0 or -1 for automatic (got {self.segmix_margin}).")
        for name in ("train_steps", "rank", "images_per_prompt", "steps"):
            if getattr(self, name) < 1:
                raise MudiError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)}).")
        if not 0.0 <= self.p <= 1.0:
            raise MudiError(f"--p must be in [0, 1] (got {self.p}).")
        if not 0 < self.fill <= 1:
            raise MudiError(f"--fill must be in (0, 1] (got {self.fill}).")
        if not 0 <= self.success_threshold <= 1:
            raise MudiError(f"--success-threshold must be in [0, 1] (got {self.success_threshold}).")
        if not self.guidance >= 0:
            raise MudiError(f"--guidance must be >= 0 (got {self.guidance}).")
        if self.learning_rate <= 0:
            raise MudiError(f"--lr must be positive (got {self.learning_rate}).")


    def resolved_segmix_margin(self) -> float:
        """The Seg-Mix margin the demo trains with (-1 keeps the trainer's automatic S/8 for 2 subjects)."""
        if self.segmix_margin != -1 or self.subjects == 2:
            return self.segmix_margin
        return 2.0


def _say(msg: str) -> None:
    print(f"[mudi demo] {msg}", flush=True)


def _stage(folder: Path, resume: bool, what: str, work: Callable[[], None]) -> float:
    """Run one stage into ``folder`` unless --resume finds it complete; returns seconds spent."""
    if resume and (folder / DONE).exists():
        _say(f"{what}: already done, skipping ({folder})")
        return 0.0
    t0 = time.perf_counter()
    _say(f"{what} ...")
    work()
    (folder / DONE).write_text("ok\n")
    dt = time.perf_counter() - t0
    _say(f"{what}: {dt:.1f} s")
    return dt


def demo_resolution() -> int:
    """Image side (px) the demo trains and samples at: the toy model's sampling size."""
    from mudi import toy

    return int(toy.SAMPLING.get("height", 64))


def generation_config(config: DemoConfig, method: Method, demo_dir: Path, gen_dir: Path, base: Path):
    """The `mudi generate` settings of one method: the LoRA and subject set of the demo run in
    ``demo_dir``, images into ``gen_dir``. Shared by the demo and benchmarks/toy_demo_sweep.py."""
    from mudi import toy
    from mudi.generate import GenerateConfig

    return GenerateConfig(
        prompts=list(toy.demo_prompts(config.subjects)), out=str(gen_dir), base=str(base),
        lora="" if method.mix == BASE_ONLY else str(demo_dir / f"lora_{method.mix}"),
        subjects=str(demo_dir / "subjects"), n=config.images_per_prompt, init=method.init, gamma=config.gamma,
        fill=config.fill, steps=config.steps, resolution=demo_resolution(), seed=config.seed,
        guidance=config.guidance, dtype="float32", save_init=method.init == "mudi",
    )


def generation_options(*, progress: bool = False) -> RunOptions:
    """How the demo runs `mudi generate`: on the CPU, into a fresh folder per method."""
    return RunOptions(overwrite=True, device="cpu", progress=progress)


def evaluate_method(config: DemoConfig, gen_dir: Path, subject_set, label: str):
    """D&C of a method's images with the toy detector and embedder (an Evaluation)."""
    from mudi import toy
    from mudi.evaluate import evaluate_folder

    return evaluate_folder(gen_dir, subject_set, toy.ToyDetector(), toy.ToyEmbedder(), clip=None,
                           success_threshold=config.success_threshold, label=label,
                           settings={"detector": "toy", "embedder": "toy"})


def stable_kernels():
    """The demo's attention runs through PyTorch's reference ("math") attention: plain matmuls and a
    softmax, instead of the fused CPU kernel that torch picks by default and that has changed between
    releases. The toy models are small, so it costs little time, and the demo's numbers depend on
    one library internal less (training amplifies 1e-6 differences into different images)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def run_demo(config: DemoConfig, options: RunOptions | None = None) -> dict:
    """Run the demo; returns the summary (also written to OUT/summary.json).

    ``options``: ``resume`` skips the stages already complete in OUT, ``overwrite`` allows a
    non-empty OUT, ``progress`` shows progress bars (the library ones too); the device is the CPU.
    """
    options = options or RunOptions()
    config.check()
    return run_isolated(lambda: _run_demo(config, options), progress=options.progress)


def run_isolated(work: Callable[[], T], *, progress: bool = False) -> T:
    """``work()`` the way the demo runs everything: one CPU thread, quiet libraries, the reference
    attention kernel (:func:`stable_kernels`); the thread count is restored afterwards."""
    import torch

    # The toy models are small: one thread is as fast as two, and it stays fast when other work
    # shares the CPU (OpenMP threads spin-waiting for a descheduled peer cost seconds per step).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quiet_libraries(progress_bars=progress), stable_kernels():
            return work()
    finally:
        torch.set_num_threads(threads)


def _run_demo(config: DemoConfig, options: RunOptions) -> dict:
    from mudi import toy
    from mudi.subjects import SubjectSet

    base = Path(config.base) if config.base else toy.base_model_path()
    out = Path(config.out)
    claim_output_dir(out, overwrite=options.overwrite, resume=options.resume, what="demo output", create=True)
    methods = [m for m in METHODS if m.name in config.methods]
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    # 1. subjects, 2. one LoRA per training mix, 3. images per method, 4. D&C per method
    timings["prepare"] = _stage(out / "subjects", options.resume, "1/4 prepare the toy subjects",
                                lambda: _make_subjects(out, config.seed, config.subjects))
    sset = SubjectSet.load(out / "subjects")
    for mix in dict.fromkeys(m.mix for m in methods if m.mix != BASE_ONLY):
        timings[f"train_{mix}"] = _stage(out / f"lora_{mix}", options.resume, f"2/4 train LoRA --mix {mix}",
                                         lambda mix=mix: _train(config, options, out, base, mix))
    pipe = _toy_pipeline(base)
    for m in methods:
        timings[f"generate_{m.name}"] = _stage(
            out / "gen" / m.name, options.resume, f"3/4 generate: {m.description}",
            lambda m=m: _generate(config, options, m, out, base, pipe))
    runs = []
    for m in methods:
        timings[f"evaluate_{m.name}"] = _stage(out / "eval" / m.name, options.resume, f"4/4 evaluate {m.name}",
                                               lambda m=m: _evaluate(config, out, sset, m))
        runs.append(_load_evaluation(out / "eval" / m.name, m.name))
    _compare(runs, out)
    timings["total"] = time.perf_counter() - t_start
    summary = demo_summary(config, base, sset, methods, runs, timings)
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.html", render_demo_report(out, summary, methods))
    _say(f"done in {timings['total']:.0f} s: {out / 'report.html'}")
    return summary


def _make_subjects(out: Path, seed: int, n_subjects: int = 2) -> None:
    """The toy photos (rendered) and the subject set imported from them (contact sheet included)."""
    from mudi import toy
    from mudi.prepare import import_subjects

    toy.make_subject_set(out / "toy_photos", seed=seed, overwrite=True, subjects=toy.similar_subjects(n_subjects))
    import_subjects(out / "toy_photos", out / "subjects", RunOptions(overwrite=True))


def _train(config: DemoConfig, options: RunOptions, out: Path, base: Path, mix: str) -> None:
    """One LoRA per training mix, same seed, steps and schedule, so they compare fairly."""
    from mudi.train import train

    if mix == "iterative":
        from mudi.toy.demo_iterative import train_iterative

        mudi = next(m for m in METHODS if m.name == "mudi")
        return train_iterative(config, options, out, base, train_config=train_config, done=DONE,
                               train_segmix=lambda: _train(config, options, out, base, "segmix"),
                               sampling=generation_config(config, mudi, out, out / "lora_iterative" / "rounds", base),
                               pipe_factory=lambda: _toy_pipeline(base))
    if mix.startswith("merged"):
        from mudi.toy.demo_modular import train_modular

        return train_modular(config, options, out, base, mix, train_config=train_config,
                             train_options=train_options, done=DONE)
    lora_dir = out / f"lora_{mix}"
    train(train_config(config, out, base, mix, lora_dir), train_options(options, lora_dir))


def train_config(config: DemoConfig, out: Path, base: Path, mix: str, lora_dir: Path, **changes):
    """The demo's `mudi train` settings for one LoRA (``changes`` override fields)."""
    from mudi.train import TrainConfig

    steps = changes.pop("max_train_steps", config.train_steps)
    return TrainConfig(
        subjects=str(out / "subjects"), base=str(base), out=str(lora_dir), resolution=demo_resolution(),
        mix=mix, p=config.p, k=config.subjects, segmix_margin=config.resolved_segmix_margin(),
        reg=config.reg, rank=config.rank,
        alpha=float(config.rank), learning_rate=config.learning_rate, max_train_steps=steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps, seed=config.seed + 42,
        checkpoint_every=max(50, steps // 2), validate_every=-1, **changes,
    )


def train_options(options: RunOptions, lora_dir: Path) -> RunOptions:
    """How the demo runs `mudi train`: CPU, fresh folder, resumed from its checkpoints on --resume."""
    return RunOptions(device="cpu", progress=options.progress, overwrite=True,
                      resume=options.resume and (lora_dir / "checkpoints").exists())


def _toy_pipeline(base: Path):
    """The toy base pipeline, loaded once and shared by every method's generation."""
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(base), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(config: DemoConfig, options: RunOptions, method: Method, out: Path, base: Path, pipe) -> None:
    from mudi.generate import generate

    generate(generation_config(config, method, out, out / "gen" / method.name, base),
             generation_options(progress=options.progress), pipe=pipe)


def _evaluate(config: DemoConfig, out: Path, sset, method: Method) -> None:
    from mudi.report import write_run_report

    ev = evaluate_method(config, out / "gen" / method.name, sset, method.name)
    ev.save(out / "eval" / method.name, overwrite=True)
    write_run_report(ev)


def _load_evaluation(folder: Path, label: str):
    from mudi.evaluate import Evaluation

    return Evaluation.load(folder, label=label)


def _compare(runs, out: Path) -> None:
    """comparison.csv/json/png of every method, in OUT."""
    from mudi.evaluate import compare_runs
    from mudi.report import write_comparison_plot

    comparison = compare_runs(runs)
    comparison.save(out)
    write_comparison_plot(comparison, out)

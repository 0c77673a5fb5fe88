"""Benchmark: `mudi train` vs a bare UNet-LoRA forward+backward loop on the same model and batch.

Builds a reduced SD-architecture pipeline (UNet block_out_channels (64, 128, 256), two
cross-attention stages, VAE (32, 64, 128, 128), a small CLIP text encoder) in a temp folder,
then runs, each in its own fresh subprocess (one CPU thread):

- ``mudi``: :func:`mudi.train.train` at 128 px with METHOD.md defaults (rank 32 on
  to_q/to_k/to_v/to_out.0, AdamW, batch 1 x accumulation 2, Seg-Mix p = 0.3), no validation,
  no intermediate checkpoints, ``--reg none`` (the default DCO adds a no-grad base-model forward
  pass per micro-batch that the bare loop does not have). Time per optimizer step is mudi's own ``step_time`` log field
  (and ``step_cpu_time``; everything inside the step: composing examples, VAE encoding of composites, text-cache
  look-up, UNet forward/backward, clipping, optimizer step, logging).
- ``bare``: the UNet alone with the same LoRA and optimizer, random latents and text
  embeddings of the same shapes, the same two micro-batches per optimizer step.

Memory is the peak resident set size of each subprocess (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` read by the child at exit, Linux kB), reported whole and minus the RSS measured
just before the model is loaded (so import overhead of the two programs does not count as
training memory). The first ``--warmup`` steps are excluded from the time. Time is reported as CPU time
(``time.process_time``, one thread: the compute actually spent, robust when other jobs share
the machine) and as wall time; medians over the measured steps.

Run:  python benchmarks/bench_train.py [--steps 12] [--warmup 2]
Targets: time <= 1.15x bare, memory <= 1.2x bare, text-encoder calls per step = 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RES = 128


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_kb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def build_model(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mudi.models.tiny import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=RES // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=128,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128), sample_size=RES,
    )
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


def child_mudi(model: str, subjects: str, out: str, steps: int, mix: str = "segmix") -> dict:
    import torch

    torch.set_num_threads(1)
    # import everything the run needs first, so "RSS before" excludes import overhead
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    import mudi.compose  # noqa: F401
    import mudi.models.lora  # noqa: F401
    import mudi.models.loading  # noqa: F401
    from mudi.settings import RunOptions
    from mudi.train import TrainConfig, train

    before = rss_kb()
    train(TrainConfig(subjects=subjects, base=model, out=out, resolution=RES, max_train_steps=steps,
                      validate_every=-1, checkpoint_every=0, mix=mix, reg="none"), RunOptions(progress=False))
    rows = [json.loads(ln) for ln in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    summary = json.loads((Path(out) / "summary.json").read_text())
    return {"step_times": [r["step_time"] for r in rows], "cpu_times": [r["step_cpu_time"] for r in rows],
            "rss_before_kb": before, "peak_kb": peak_kb(),
            "text_encoder_calls_per_step": summary["text_encoder_calls_per_step"],
            "text_encoder_calls_setup": summary["text_encoder_calls_setup"],
            "kinds": [r["kinds"] for r in rows]}


def child_bare(model: str, steps: int) -> dict:
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    before = rss_kb()
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", use_safetensors=True)
    sched = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    unet.requires_grad_(False)
    torch.manual_seed(42)
    unet.add_adapter(LoraConfig(r=32, lora_alpha=32, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, foreach=False)
    unet.train()
    g = torch.Generator().manual_seed(0)
    hidden = unet.config.cross_attention_dim
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(2):  # batch 1 x gradient accumulation 2
            lat = torch.randn(1, 4, RES // 8, RES // 8, generator=g)
            emb = torch.randn(1, 77, hidden, generator=g)
            noise = torch.randn(lat.shape, generator=g)
            t = torch.randint(0, 1000, (1,), generator=g)
            pred = unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=emb).sample
            (F.mse_loss(pred.float(), noise) / 2).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"step_times": times, "cpu_times": cpu, "rss_before_kb": before, "peak_kb": peak_kb()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of (bare, mudi --mix none, mudi segmix), interleaved against machine-load drift")
    ap.add_argument("--subjects", default=None, help="subject set (default: examples/subjects/dog6_and_dog2)")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.child:
        kind, *rest = args.child
        if kind == "bare":
            res = child_bare(rest[0], args.steps)
        else:
            res = child_mudi(rest[0], rest[1], rest[2], args.steps, mix=rest[3])
        print("RESULT " + json.dumps(res))
        return 0

    repo = Path(__file__).resolve().parents[1]
    subjects = args.subjects or str(repo / "examples" / "subjects" / "dog6_and_dog2")
    with tempfile.TemporaryDirectory(prefix="mudi-bench-") as tmp:
        model = Path(tmp) / "model"
        build_model(model)

        def run(*child: str) -> dict:
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", *child]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"benchmark child {child[0]} failed")
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            return json.loads(line[7:])

        runs: dict[str, list[dict]] = {"bare": [], "none": [], "segmix": []}
        for r in range(args.rounds):
            runs["bare"].append(run("bare", str(model)))
            for mix in ("none", "segmix"):
                runs[mix].append(run("mudi", str(model), subjects, str(Path(tmp) / f"out_{mix}_{r}"), mix))

    import statistics

    def med(name: str, key: str) -> float:
        return statistics.median(v for res in runs[name] for v in res[key][args.warmup:])

    def mem(name: str, whole: bool) -> float:
        vals = [res["peak_kb"] - (0 if whole else res["rss_before_kb"]) for res in runs[name]]
        return statistics.median(vals) / 1024

    mudi = runs["segmix"][-1]
    composites = sum(k != "plain" for res in runs["segmix"] for ks in res["kinds"] for k in ks)
    total = sum(len(ks) for res in runs["segmix"] for ks in res["kinds"])
    print(f"reduced SD UNet (64,128,256) + VAE (32,64,128,128) at {RES} px (VAE-encoder/UNet-forward FLOP ratio "
          f"1.40, as SD 1.5 at 512 px), LoRA rank 32, batch 1 x accumulation 2, {args.steps} steps per run "
          f"({args.warmup} warm-up excluded), {args.rounds} interleaved rounds, 1 CPU thread; medians")
    cols = [("bare", "bare loop"), ("none", "mudi --mix none"), ("segmix", "mudi segmix p=.3")]
    print(f"{'':30s}" + "".join(f"{label:>18s}" for _, label in cols) + f"{'none/bare':>11s}{'segmix/bare':>13s}")

    def row(label: str, vals: list[float], unit: str, fmt: str) -> None:
        cells = "".join(f"{format(v, fmt) + unit:>18s}" for v in vals)
        print(f"{label:30s}{cells}{vals[1] / vals[0]:11.2f}{vals[2] / vals[0]:13.2f}")

    def mean(name: str, key: str) -> float:
        return statistics.fmean(v for res in runs[name] for v in res[key][args.warmup:])

    row("CPU time / optimizer step", [med(n, "cpu_times") for n, _ in cols], " s", ".3f")
    row("  (mean instead of median)", [mean(n, "cpu_times") for n, _ in cols], " s", ".3f")
    row("wall time / optimizer step", [med(n, "step_times") for n, _ in cols], " s", ".3f")
    row("peak RSS - RSS before model", [mem(n, False) for n, _ in cols], " MB", ".0f")
    row("peak RSS (whole process)", [mem(n, True) for n, _ in cols], " MB", ".0f")
    print("targets: time <= 1.15x, memory (peak RSS - RSS before model) <= 1.2x, text-encoder calls per step 0")
    print(f"text-encoder calls per step: {mudi['text_encoder_calls_per_step']} "
          f"({mudi['text_encoder_calls_setup']} batched calls at setup)")
    print(f"Seg-Mix composites (VAE-encoded on the fly, the method's own cost): {composites}/{total} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())

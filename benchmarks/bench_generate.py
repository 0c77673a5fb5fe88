"""Cost of mean-shifted initialization: time per image with ``--init mudi`` vs ``--init none``.

    python benchmarks/bench_generate.py [--model reduced|tiny|PATH] [--resolution 128] [--steps 20]
                                        [--repeats 6] [--subjects DIR] [--device cpu]

Both runs go through :func:`mudi.generate.sampling.generate_image` (the code path of ``mudi generate``)
with the same prompt, seeds and sampler; the initialized run additionally renders the init
canvas from the real reference photos, VAE-encodes it and noises it (one VAE encoder pass
per image). Prints the median seconds per image for each mode and their ratio (target <= 1.05),
and — because a shared CPU makes whole-image timings noisy — the median time of the
initialization alone (:func:`mudi.generate.init.mean_shifted_latents`, canvas included) and the ratio
it implies, (none + init) / none.

``--model reduced`` (default) builds, in memory with random weights, an SD-1.5-shaped pipeline
scaled down ~5x in width (UNet 64/128/256/256, VAE 32/64/128/128 — the VAE is relatively
*heavier* than in SD 1.5, so the ratio is conservative); ``tiny`` uses mudi.models.tiny's test
pipeline; a path or hub id loads a real pipeline through mudi.models.loading (e.g. on a GPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mudi.generate import GenerateConfig  # noqa: E402
from mudi.generate.jobs import ImageJob  # noqa: E402
from mudi.generate.sampling import generate_image, set_scheduler  # noqa: E402
from mudi.generate.layout import auto_layout  # noqa: E402
from mudi.subjects import SubjectSet, mask_bbox  # noqa: E402

DEFAULT_SUBJECTS = Path(__file__).resolve().parents[1] / "examples" / "subjects" / "dog6_and_dog2"


def reduced_pipeline(resolution: int):
    """SD-1.5-shaped pipeline, ~5x narrower, random weights (seeded)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mudi.models.tiny import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=resolution // 8,
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=resolution,
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                        num_attention_heads=4, max_position_embeddings=77, projection_dim=256))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load(model: str, resolution: int, device: str):
    if model == "reduced":
        return reduced_pipeline(resolution).to(device)
    from mudi.models.loading import load_pipeline

    if model == "tiny":
        from mudi.models.tiny import build_tiny_models

        root = Path(tempfile.mkdtemp(prefix="mudi_bench_"))
        model = str(build_tiny_models(root, parts="sd")["sd"])
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return load_pipeline(model, dtype=dtype, device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="reduced", help="reduced (default), tiny, or a pipeline folder / hub id")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=6, help="timed images per mode (after one warm-up each)")
    ap.add_argument("--subjects", default=str(DEFAULT_SUBJECTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scheduler", default="default")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cuda = args.device.startswith("cuda")
    # On CPU the machine may be shared: count this process's CPU time (not wall time), which
    # other processes' load does not inflate. On CUDA: wall time with synchronization.
    clock = time.perf_counter if cuda else time.process_time

    sset = SubjectSet.load(args.subjects)
    pipe = load(args.model, args.resolution, args.device)
    set_scheduler(pipe, args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    s = args.resolution
    keys = sset.keys[:2]
    prompt = "a photo of " + " and ".join(sset.subject(k).phrase for k in keys)

    def job(i: int) -> ImageJob:
        rng = np.random.default_rng(i)
        dims = {}
        for k in keys:
            x0, y0, x1, y1 = mask_bbox(sset.photos(k)[0].mask)
            dims[k] = (x1 - x0, y1 - y0)
        layout = auto_layout([(k, dims[k]) for k in keys], s, s, rng)
        return ImageJob(i, prompt, i, list(keys), [sset.subject(k).phrase for k in keys], {k: 0 for k in keys},
                        layout, "auto")

    def timed(init: str, i: int) -> float:
        cfg = GenerateConfig(prompts=[prompt], out="-", init=init, steps=args.steps, guidance=args.guidance,
                             resolution=s)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = clock()
        generate_image(pipe, job(i), sset, cfg, height=s, width=s)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return clock() - t

    timed("none", 0)
    timed("mudi", 0)
    times: dict[str, list[float]] = {"none": [], "mudi": []}
    for r in range(args.repeats):  # interleave the modes so load changes hit both alike
        for mode in ("none", "mudi") if r % 2 == 0 else ("mudi", "none"):
            times[mode].append(timed(mode, r + 1))
    from mudi.generate.init import mean_shifted_latents

    init_times = []
    for r in range(max(5, args.repeats)):
        j = job(100 + r)
        photos = {k: sset.photos(k)[0] for k in keys}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = clock()
        mean_shifted_latents(pipe, photos, j.layout, generator=torch.Generator().manual_seed(r), height=s, width=s,
                             num_inference_steps=args.steps)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        init_times.append(clock() - t)
    init_only = statistics.median(init_times)
    none, mudi = statistics.median(times["none"]), statistics.median(times["mudi"])
    print(f"clock={'wall' if cuda else 'process CPU time'} threads={torch.get_num_threads()}")
    print(f"model={args.model} resolution={s} steps={args.steps} guidance={args.guidance} "
          f"device={args.device} scheduler={type(pipe.scheduler).__name__} repeats={args.repeats}")
    print(f"init none : {none:.3f} s/image  (runs: {', '.join(f'{t:.3f}' for t in times['none'])})")
    print(f"init mudi : {mudi:.3f} s/image  (runs: {', '.join(f'{t:.3f}' for t in times['mudi'])})")
    print(f"ratio mudi/none (whole images): {mudi / none:.3f}  (target <= 1.05)")
    print(f"initialization alone: {init_only:.3f} s/image -> (none + init) / none = {(none + init_only) / none:.3f}")


if __name__ == "__main__":
    main()

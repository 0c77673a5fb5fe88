"""Train the toy base model on the toy world (resumable, seeded).

Recipe, top to bottom:
1. Render ``--images`` random scenes of world ``--world-version`` (cached as ``images.npy``).
2. Train the VAE (L1 + MSE reconstruction, tiny KL) for ``--vae-steps``.
3. Encode every image once (latent mean and std), set the VAE scaling factor to 1/std.
4. Train UNet + CLIP text encoder jointly (min-SNR-5 weighting, 10 % empty captions for
   classifier-free guidance, EMA of the weights) for ``--unet-steps`` or until ``--deadline``
   (UTC HH:MM), checkpointing every ``--ckpt-every`` steps.
5. Export the EMA weights as a StableDiffusionPipeline folder (fp16 safetensors) and a
   sample grid.

The shipped model was made in two stages (rerun a command to resume it after an interruption):

    # stage 1: pre-training on world version 1 (fine markings), VAE from scratch
    python -m mudi.toy.train --out runs/toy_base --world-version 1 --unet-steps 6400
    # stage 2: fine-tuning VAE and UNet on world version 2 (coarser markings, similar pairs)
    python -m mudi.toy.train --out runs/toy_v2 --init-from runs/toy_base --world-version 2 \
        --vae-steps 1200 --vae-phase1-steps 0 --vae-lr 1e-3 --unet-eps-steps 0 \
        --min-snr-gamma 0 --p-made-up 0.3 --lr 3e-4 --lr-decay-start 4500 --lr-decay-end 6000 \
        --unet-steps 6000 --threads 2 --export src/mudi/assets/toy_base

The exact arguments of the last stage are saved in the export's ``toy_training.json``.

Continuing from the shipped model. ``--init-from`` also takes an exported pipeline folder (its
safetensors: VAE, UNet, text encoder; the fp16 weights are widened to fp32), so training goes on
from ``src/mudi/assets/toy_base`` in steps, with stage 2's recipe and the VAE kept as shipped:

    python -m mudi.toy.train --out runs/toy_more --init-from src/mudi/assets/toy_base --world-version 2 \
        --vae-steps 0 --unet-eps-steps 0 --min-snr-gamma 0 --p-made-up 0.3 --lr 1e-4 --warmup 50 \
        --lr-decay-start 1000 --lr-decay-end 2000 --unet-steps 2000 --export runs/toy_more/pipeline

The optimizer state and the EMA start afresh from the loaded weights; the latent scaling factor
is measured again on the rendered images. The next step continues from ``runs/toy_more`` (a run
folder: the EMA weights of its checkpoints) or from its exported pipeline.

On a GPU. ``--device cuda`` (or ``cuda:N``) puts the models and every batch on the GPU,
``--precision bf16`` runs the forward passes under bf16 autocast (master weights, AdamW state and
EMA stay fp32; losses in fp32), and ``--batch`` can grow with the card:

    python -m mudi.toy.train --out runs/toy_gpu --device cuda --precision bf16 --batch 128 \
        --threads 2 --export runs/toy_gpu/pipeline

Same recipe, checkpoints and export format as on the CPU; checkpoints load on either device. All
random draws (batch indices, captions, VAE samples, latent samples, noise, timesteps) still come
from the CPU generators in the CPU order and are then moved, so a CUDA run sees the CPU run's data
and noise; its weights differ in the last bits (other kernels; bf16 more). The schedule is counted
in steps: with a larger batch, fewer ``--unet-steps`` (or a larger ``--lr``) may do, which has not
been measured. ``--model-config FILE.json`` (ToyModelConfig fields, e.g. ``{"unet_channels": [64,
128, 256], "unet_attention_heads": [2, 4, 8]}``) trains a larger model from scratch (both stages).
Only a GPU shows: the speed and memory at large batches, whether bf16 training follows the fp32
loss curve over thousands of steps, how far a CUDA run drifts from the CPU one, bitwise resume on
CUDA (cuDNN kernels are not all deterministic), and how a larger model fares in ``mudi demo``.
The default (``--device cpu --precision fp32``) is bitwise the path the shipped model was made on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mudi.errors import MudiError
from mudi.toy.model import load_config
from mudi.toy.train_device import PRECISIONS, Placement, check_init_from, resolve_placement
from mudi.toy.training import GRID_CAPTIONS, encode_all, export, log, prepare_data, sample_grid, train_vae
from mudi.toy.train_unet import train_unet
from mudi.toy.world import WORLD_VERSION, WORLD_VERSIONS



def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mudi.toy.train``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/toy_base"), help="run folder (checkpoints, logs)")
    p.add_argument("--export", type=Path, default=None, help="pipeline folder to write at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=30000)
    p.add_argument("--world-version", type=int, default=WORLD_VERSION, choices=WORLD_VERSIONS,
                   help="toy world version to render (1 = the pre-training world of the shipped model)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="weights to start from: a previous run folder (vae.pt / unet.pt, EMA weights) or an "
                        "exported pipeline folder such as src/mudi/assets/toy_base (its safetensors)")
    p.add_argument("--model-config", type=Path, default=None,
                   help="JSON file of ToyModelConfig fields (network sizes; default: the shipped model's)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default: the shipped model's path, bitwise unchanged) or cuda / cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16 = bf16 autocast around the forward passes (fp32 master weights, optimizer, EMA); "
                        "meant for CUDA")
    p.add_argument("--vae-steps", type=int, default=1800)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-fg-weight", type=float, default=4.0, help="extra loss weight on object pixels")
    p.add_argument("--vae-phase1-steps", type=int, default=700,
                   help="first VAE steps without object weighting (how the shipped VAE was made; 0 = none)")
    p.add_argument("--vae-phase1-horizon", type=int, default=1200,
                   help="cosine learning-rate horizon used during the first phase")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-kl", type=float, default=1e-4)
    p.add_argument("--unet-steps", type=int, default=6400)
    p.add_argument("--unet-eps-steps", type=int, default=1900,
                   help="first UNet steps trained with the epsilon target (then v-prediction)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0,
                   help="min-SNR loss weighting gamma (0 = unweighted loss; stage 2 used 0)")
    p.add_argument("--batch", type=int, default=16, help="UNet batch size (larger on a GPU: e.g. 128)")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-decay-start", type=int, default=4000, help="UNet step where the linear lr anneal starts")
    p.add_argument("--lr-decay-end", type=int, default=6200, help="UNet step where the lr reaches 10 %%")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--p-made-up", type=float, default=0.0,
                   help="per object: probability of a made-up word before its class word (stage 2: 0.3)")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--deadline", default=None, help="UTC HH:MM: stop UNet training then and export")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a user mistake prints one line and returns 2 before anything is written."""
    args = build_parser().parse_args(argv)
    try:
        place = resolve_placement(args.device, args.precision)
        cfg = load_config(args.model_config)
        if args.init_from is not None:
            check_init_from(args.init_from, cfg)
    except MudiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_recipe(args, place)


def run_recipe(args, place: Placement) -> int:
    """Steps 1-5 of the recipe in ``args.out`` on ``place``."""
    import torch

    torch.set_num_threads(args.threads)
    run = args.out
    run.mkdir(parents=True, exist_ok=True)
    (run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    start = time.time()
    log(run, f"rendering {args.images} scenes (seed {args.seed})")
    images, fg, scenes = prepare_data(run, args.images, args.seed, args.world_version)
    log(run, "training VAE")
    vae = train_vae(run, images, fg, args, place)
    lat_mean, lat_std, scale = encode_all(run, vae, images, place)
    vae.register_to_config(scaling_factor=scale)
    del images, fg
    log(run, "training UNet + text encoder")
    unet, te, tok, steps, loss = train_unet(run, vae, lat_mean, lat_std, scale, scenes, args, place)
    meta = {"seed": args.seed, "images": args.images, "vae_steps": args.vae_steps, "unet_steps": steps,
            "final_mse": loss, "scaling_factor": scale,
            "wall_time_this_invocation_s": round(time.time() - start, 1),
            "args": {k: str(v) for k, v in vars(args).items()}}
    if args.export is not None:
        export(args.export, vae, unet, te, tok, scale, meta)
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.export, torch_dtype=torch.float32).to(place.device)
        sample_grid(pipe, GRID_CAPTIONS, run / "samples_final.png", n_per=6)
        log(run, f"exported pipeline to {args.export}")
    log(run, f"done in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

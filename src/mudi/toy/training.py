"""The toy base model's training steps: data, VAE, latents, pipeline export, sample grids.

Used by :mod:`mudi.toy.train` (the command) and :mod:`mudi.toy.train_unet` (the UNet stage).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import time
from pathlib import Path

import numpy as np

from mudi.toy.train_device import Placement, as_fp32
from mudi.toy.world import WORLD_VERSION

#: Captions for the sample grid (also a good list of demo prompts for the base model).
GRID_CAPTIONS = (
    "a photo of a red circle on grass",
    "a photo of a blue square, simple background",
    "a photo of a striped yellow circle on water",
    "a photo of a dotted yellow circle on grass",
    "a photo of a purple triangle and a orange star on sand",
    "a photo of a checkered pink square and a red triangle on wood",
    "a photo of a striped yellow circle and a dotted yellow circle, simple background",
    "a photo of a circle, a square and a triangle on grass",
)


def log(run: Path, msg: str) -> None:
    line = f"[{dt.datetime.now(dt.timezone.utc).strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(run / "log.txt", "a") as f:
        f.write(line + "\n")


def deadline_passed(deadline: str | None) -> bool:
    if not deadline:
        return False
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(x) for x in deadline.split(":"))
    return (now.hour, now.minute) >= (hh, mm)


def save_atomic_torch(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def images_to_tensor(batch: np.ndarray):
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def prepare_data(run: Path, n: int, seed: int, version: int = WORLD_VERSION):
    """Images and object masks (cached) and scene descriptions (regenerated; cheap)."""
    from mudi.toy import world

    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng, version=version) for _ in range(n)]
    cache, fg_cache = run / "images.npy", run / "foreground.npy"
    if cache.exists() and fg_cache.exists():
        images, fg = np.load(cache), np.load(fg_cache)
        if len(images) == n == len(fg):
            return images, fg, scenes
    images = np.empty((n, 64, 64, 3), np.uint8)
    fg = np.empty((n, 64, 64), bool)
    for i, sc in enumerate(scenes):
        images[i], masks = world.render_scene(sc)
        fg[i] = np.logical_or.reduce(masks)
    for arr, path in ((images, cache), (fg, fg_cache)):
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
    return images, fg, scenes


def init_weights(args, name: str) -> dict | None:
    """Model weights to start from (``--init-from``: a run folder or a pipeline folder), or None."""
    from mudi.toy.train_device import load_init

    if args.init_from is None:
        return None
    return load_init(args.init_from, name)


def train_vae(run: Path, images: np.ndarray, fg: np.ndarray, args, place: Placement = Placement()) -> "object":
    """Train (or resume, or skip with ``--vae-steps 0``) the VAE on ``place``; returns it in eval mode."""
    import torch

    from mudi.toy.model import build_vae, load_config

    torch.manual_seed(args.seed)
    vae = build_vae(load_config(args.model_config))
    ck = run / "vae.pt"
    init = None if ck.exists() else init_weights(args, "vae.pt")  # a resume loads ck instead
    if init is not None:
        vae.load_state_dict(init["model"])
    place.model(vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    rng = np.random.default_rng(args.seed + 1)
    if ck.exists():
        state = torch.load(ck, weights_only=False, map_location="cpu")
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    if step >= args.vae_steps:
        return vae.eval()
    vae.train()
    t0 = time.time()
    ema_loss = None
    while step < args.vae_steps:
        idx = rng.integers(0, len(images), args.vae_batch)
        x = place.tensor(images_to_tensor(images[idx]))
        # objects are small: weight their pixels up so the VAE does not blur them into the background
        # (the shipped VAE had a first phase without object weighting, see --vae-phase1)
        warm = step < args.vae_phase1_steps
        fg_weight = 0.0 if warm else args.vae_fg_weight
        w = 1.0 + fg_weight * torch.from_numpy(fg[idx]).float()[:, None]
        w = place.tensor(w / w.mean())
        with place.autocast():
            # noise from torch's global CPU generator on every device (the same draws as on a CPU)
            post = as_fp32(vae.encode(x).latent_dist)
            rec = vae.decode(post.sample(generator=torch.default_generator)).sample.float()
        l1 = ((rec - x).abs() * w).mean()
        l2 = ((rec - x).pow(2) * w).mean()
        kl = post.kl().mean() / (post.mean[0].numel())
        loss = l1 + l2 + args.vae_kl * kl
        horizon = args.vae_phase1_horizon if warm else args.vae_steps
        for gparam in opt.param_groups:  # cosine decay to 5 % of the base rate
            gparam["lr"] = args.vae_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / horizon)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 50 == 0:
            log(run, f"vae step {step}/{args.vae_steps} loss {ema_loss:.4f} l1 {l1.item():.4f} "
                 f"kl {kl.item():.3f} {(time.time() - t0) / 50:.2f}s/step")
            t0 = time.time()
        if step % args.ckpt_every == 0 or step == args.vae_steps:
            save_atomic_torch(
                {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ck)
    return vae.eval()


def encode_all(run: Path, vae, images: np.ndarray, place: Placement = Placement()):
    """Latent means/stds of all images (cached, on the CPU; encoded in fp32 on ``place``) and the
    scaling factor 1/std."""
    import torch

    cache = run / "latents.pt"
    if cache.exists():
        d = torch.load(cache, weights_only=False, map_location="cpu")
        return d["mean"], d["std"], d["scale"]
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            post = vae.encode(place.tensor(images_to_tensor(images[i : i + 256]))).latent_dist
            means.append(post.mean.half().cpu())
            stds.append(post.std.half().cpu())
    mean = torch.cat(means)
    std = torch.cat(stds)
    scale = float(1.0 / mean.float().std())
    save_atomic_torch({"mean": mean, "std": std, "scale": scale}, cache)
    log(run, f"encoded {len(images)} images; latent std {1 / scale:.4f} -> scaling factor {scale:.4f}")
    # reconstruction check image
    with torch.no_grad():
        x = images_to_tensor(images[:8])
        rec = vae.decode(place.tensor(mean[:8].float())).sample.cpu()
        grid = torch.cat([x, rec], 2).clamp(-1, 1).add(1).mul(127.5).round().byte()
        grid = grid.permute(2, 0, 3, 1).reshape(128, 8 * 64, 3).numpy()
    from PIL import Image

    Image.fromarray(grid).save(run / "vae_recon.png")
    return mean, std, scale


class EMA:
    def __init__(self, model, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def update(self, model, decay: float):
        import torch

        with torch.no_grad():
            for pe, p in zip(self.model.parameters(), model.parameters()):
                pe.lerp_(p.detach(), 1 - decay)


def build_pipeline(vae, unet, text_encoder, tokenizer):
    from diffusers import StableDiffusionPipeline

    from mudi.toy.model import sampling_scheduler

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def sample_grid(pipe, captions, path: Path, seed: int = 0, n_per: int = 4, steps: int = 20,
                guidance: float = 4.0) -> np.ndarray:
    """Rows = captions, columns = seeds; saves a PNG (upscaled x2) and returns the array."""
    import torch
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i, cap in enumerate(captions):
        g = torch.Generator().manual_seed(seed + i)
        out = pipe([cap] * n_per, num_inference_steps=steps, guidance_scale=guidance,
                   generator=g, output_type="np", height=64, width=64).images
        rows.append(np.concatenate(list(out), 1))
    grid = (np.concatenate(rows, 0) * 255).round().clip(0, 255).astype(np.uint8)
    img = Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return grid


def export(out: Path, vae, unet, te, tok, scale: float, meta: dict) -> Path:
    """Save a StableDiffusionPipeline folder with fp16 safetensors weights."""
    import torch

    vae = copy.deepcopy(vae)
    vae.register_to_config(scaling_factor=scale)
    pipe = build_pipeline(vae, copy.deepcopy(unet), copy.deepcopy(te), tok)
    pipe.to("cpu")
    pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "toy_training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out

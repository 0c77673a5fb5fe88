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
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import time
from pathlib import Path

import numpy as np

from mudi.toy.world import WORLD_VERSION, WORLD_VERSIONS

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


def _log(run: Path, msg: str) -> None:
    line = f"[{dt.datetime.now(dt.timezone.utc).strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(run / "log.txt", "a") as f:
        f.write(line + "\n")


def _deadline_passed(deadline: str | None) -> bool:
    if not deadline:
        return False
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(x) for x in deadline.split(":"))
    return (now.hour, now.minute) >= (hh, mm)


def _save_atomic_torch(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _images_to_tensor(batch: np.ndarray):
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


def _init_weights(args, name: str) -> dict | None:
    """Model weights of a previous run's checkpoint to start from (``--init-from``), or None."""
    import torch

    if args.init_from is None:
        return None
    path = args.init_from / name
    if not path.is_file():
        raise SystemExit(f"--init-from {args.init_from}: {name} not found (expected a previous run folder)")
    return torch.load(path, weights_only=False)  # our own checkpoint, written by this script


def train_vae(run: Path, images: np.ndarray, fg: np.ndarray, args) -> "object":
    import torch

    from mudi.toy.model import ToyModelConfig, build_vae

    cfg = ToyModelConfig()
    torch.manual_seed(args.seed)
    vae = build_vae(cfg)
    ck = run / "vae.pt"
    init = None if ck.exists() else _init_weights(args, "vae.pt")  # a resume loads ck instead
    if init is not None:
        vae.load_state_dict(init["model"])
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    rng = np.random.default_rng(args.seed + 1)
    if ck.exists():
        state = torch.load(ck, weights_only=False)
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
        x = _images_to_tensor(images[idx])
        # objects are small: weight their pixels up so the VAE does not blur them into the background
        # (the shipped VAE had a first phase without object weighting, see --vae-phase1)
        warm = step < args.vae_phase1_steps
        fg_weight = 0.0 if warm else args.vae_fg_weight
        w = 1.0 + fg_weight * torch.from_numpy(fg[idx]).float()[:, None]
        w = w / w.mean()
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
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
            _log(run, f"vae step {step}/{args.vae_steps} loss {ema_loss:.4f} l1 {l1.item():.4f} "
                 f"kl {kl.item():.3f} {(time.time() - t0) / 50:.2f}s/step")
            t0 = time.time()
        if step % args.ckpt_every == 0 or step == args.vae_steps:
            _save_atomic_torch(
                {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ck)
    return vae.eval()


def encode_all(run: Path, vae, images: np.ndarray):
    """Latent means/stds of all images (cached) and the scaling factor 1/std."""
    import torch

    cache = run / "latents.pt"
    if cache.exists():
        d = torch.load(cache, weights_only=False)
        return d["mean"], d["std"], d["scale"]
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            post = vae.encode(_images_to_tensor(images[i : i + 256])).latent_dist
            means.append(post.mean.half())
            stds.append(post.std.half())
    mean = torch.cat(means)
    std = torch.cat(stds)
    scale = float(1.0 / mean.float().std())
    _save_atomic_torch({"mean": mean, "std": std, "scale": scale}, cache)
    _log(run, f"encoded {len(images)} images; latent std {1 / scale:.4f} -> scaling factor {scale:.4f}")
    # reconstruction check image
    with torch.no_grad():
        x = _images_to_tensor(images[:8])
        rec = vae.decode(mean[:8].float()).sample
        grid = torch.cat([x, rec], 2).clamp(-1, 1).add(1).mul(127.5).round().byte()
        grid = grid.permute(2, 0, 3, 1).reshape(128, 8 * 64, 3).numpy()
    from PIL import Image

    Image.fromarray(grid).save(run / "vae_recon.png")
    return mean, std, scale


class _EMA:
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


def train_unet(run: Path, vae, lat_mean, lat_std, scale: float, scenes, args):
    import torch
    import torch.nn.functional as F

    from mudi.toy import world
    from mudi.toy.model import ToyModelConfig, build_text_encoder, build_tokenizer, build_unet, training_scheduler

    cfg = ToyModelConfig()
    torch.manual_seed(args.seed + 2)
    unet = build_unet(cfg)
    te = build_text_encoder(cfg)
    tok = build_tokenizer()
    sched = training_scheduler()
    ck = run / "unet.pt"
    init = None if ck.exists() else _init_weights(args, "unet.pt")  # a resume loads ck instead
    if init is not None:  # start from the previous run's EMA weights
        unet.load_state_dict(init["ema_unet"])
        te.load_state_dict(init["ema_te"])
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_u, ema_t = _EMA(unet, args.ema), _EMA(te, args.ema)
    rng = np.random.default_rng(args.seed + 3)
    step = 0
    if ck.exists():
        s = torch.load(ck, weights_only=False)
        unet.load_state_dict(s["unet"]); te.load_state_dict(s["te"])
        ema_u.model.load_state_dict(s["ema_unet"]); ema_t.model.load_state_dict(s["ema_te"])
        opt.load_state_dict(s["opt"]); step = s["step"]
        rng.bit_generator.state = s["rng"]; torch.set_rng_state(s["torch_rng"])
        _log(run, f"resumed unet training at step {step}")
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    if args.min_snr_gamma > 0:
        g = args.min_snr_gamma
        loss_w_eps = torch.clamp(snr, max=g) / snr  # min-SNR weighting (epsilon target)
        loss_w_v = torch.clamp(snr, max=g) / (snr + 1)  # min-SNR weighting (v target)
    else:
        # plain losses. With the v target, min-SNR weights the high-noise steps by ~SNR (0.005
        # at t = 999): on 16 x 16 latents those steps decide layout and object count, and the
        # stage-1 model drew fragmented objects; stage 2 trains them at full weight.
        loss_w_eps = loss_w_v = torch.ones_like(snr)
    unet.train(); te.train()
    t0 = time.time()
    run_loss = None
    n = len(scenes)
    while step < args.unet_steps and not _deadline_passed(args.deadline):
        idx = rng.integers(0, n, args.batch)
        caps = [world.caption(scenes[i], rng, p_made_up=args.p_made_up) for i in idx]
        caps = ["" if rng.random() < args.p_uncond else c for c in caps]
        ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        it = torch.from_numpy(idx)
        z = (lat_mean[it].float() + lat_std[it].float() * torch.randn(len(idx), *lat_mean.shape[1:])) * scale
        noise = torch.randn_like(z)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),))
        zt = sched.add_noise(z, noise, t)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if args.lr_decay_end > args.lr_decay_start and step >= args.lr_decay_start:  # linear anneal to 10 %
            frac = min(1.0, (step - args.lr_decay_start) / (args.lr_decay_end - args.lr_decay_start))
            lr *= 1.0 - 0.9 * frac
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        cond = te(ids).last_hidden_state
        pred = unet(zt, t, cond).sample
        # the shipped model was first trained with the epsilon target (--unet-eps-steps), then v
        if step < args.unet_eps_steps:
            target, loss_w = noise, loss_w_eps
        else:
            target, loss_w = sched.get_velocity(z, noise, t), loss_w_v
        per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * loss_w[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_u.update(unet, decay); ema_t.update(te, decay)
        run_loss = per.mean().item() if run_loss is None else 0.98 * run_loss + 0.02 * per.mean().item()
        if step % 25 == 0:
            _log(run, f"unet step {step}/{args.unet_steps} mse {run_loss:.4f} lr {lr:.2e} "
                 f"{(time.time() - t0) / 25:.2f}s/step")
            t0 = time.time()
        if step % args.ckpt_every == 0:
            _save_atomic_torch(
                {"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_u.model.state_dict(),
                 "ema_te": ema_t.model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "loss": run_loss}, ck)
        if args.sample_every and step % args.sample_every == 0:
            pipe = build_pipeline(vae, ema_u.model, ema_t.model, tok)
            sample_grid(pipe, GRID_CAPTIONS[:6], run / f"samples_{step:06d}.png", n_per=4)
            unet.train(); te.train()
    _save_atomic_torch(
        {"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_u.model.state_dict(),
         "ema_te": ema_t.model.state_dict(), "opt": opt.state_dict(), "step": step,
         "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "loss": run_loss}, ck)
    _log(run, f"unet training stopped at step {step} (mse {run_loss})")
    return ema_u.model, ema_t.model, tok, step, run_loss


def export(out: Path, vae, unet, te, tok, scale: float, meta: dict) -> Path:
    """Save a StableDiffusionPipeline folder with fp16 safetensors weights."""
    import torch

    vae = copy.deepcopy(vae)
    vae.register_to_config(scaling_factor=scale)
    pipe = build_pipeline(vae, copy.deepcopy(unet), copy.deepcopy(te), tok)
    pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "toy_training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/toy_base"), help="run folder (checkpoints, logs)")
    p.add_argument("--export", type=Path, default=None, help="pipeline folder to write at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=30000)
    p.add_argument("--world-version", type=int, default=WORLD_VERSION, choices=WORLD_VERSIONS,
                   help="toy world version to render (1 = the pre-training world of the shipped model)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="previous run folder whose vae.pt / unet.pt (EMA) weights to start from")
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
    p.add_argument("--batch", type=int, default=16)
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
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    run = args.out
    run.mkdir(parents=True, exist_ok=True)
    (run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    start = time.time()
    _log(run, f"rendering {args.images} scenes (seed {args.seed})")
    images, fg, scenes = prepare_data(run, args.images, args.seed, args.world_version)
    _log(run, "training VAE")
    vae = train_vae(run, images, fg, args)
    lat_mean, lat_std, scale = encode_all(run, vae, images)
    vae.register_to_config(scaling_factor=scale)
    del images, fg
    _log(run, "training UNet + text encoder")
    unet, te, tok, steps, loss = train_unet(run, vae, lat_mean, lat_std, scale, scenes, args)
    meta = {"seed": args.seed, "images": args.images, "vae_steps": args.vae_steps, "unet_steps": steps,
            "final_mse": loss, "scaling_factor": scale,
            "wall_time_this_invocation_s": round(time.time() - start, 1),
            "args": {k: str(v) for k, v in vars(args).items()}}
    if args.export is not None:
        export(args.export, vae, unet, te, tok, scale, meta)
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.export, torch_dtype=torch.float32)
        sample_grid(pipe, GRID_CAPTIONS, run / "samples_final.png", n_per=6)
        _log(run, f"exported pipeline to {args.export}")
    _log(run, f"done in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

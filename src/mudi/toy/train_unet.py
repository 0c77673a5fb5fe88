"""Stage 4 of the toy recipe: UNet + text encoder trained jointly (EMA of the weights, resumable).

The loop draws, per step and in this order: batch indices, captions (attribute drops, made-up
words), empty captions for classifier-free guidance (numpy ``rng``), then latent samples, noise
and timesteps (torch's global CPU RNG, seeded once: this is a standalone training script, and the
shipped model's recipe depends on that order). Everything is drawn on the CPU and then moved to
the run's device (:mod:`mudi.toy.train_device`), so the order is the same on every device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mudi.toy import captions
from mudi.toy.train_device import Placement
from mudi.toy.training import (GRID_CAPTIONS, EMA, deadline_passed, init_weights, log, save_atomic_torch,
                               build_pipeline, sample_grid)


@dataclass
class UnetRun:
    """Models, optimizer, EMA copies and counters of a UNet training run."""

    unet: Any
    te: Any
    tok: Any
    sched: Any
    opt: Any
    ema_u: EMA
    ema_t: EMA
    rng: np.random.Generator
    params: list
    place: Placement = Placement()
    step: int = 0
    loss: float | None = None

    def state(self) -> dict:
        import torch

        return {"unet": self.unet.state_dict(), "te": self.te.state_dict(), "ema_unet": self.ema_u.model.state_dict(),
                "ema_te": self.ema_t.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "loss": self.loss}


def setup_unet_run(run: Path, args, place: Placement = Placement()) -> UnetRun:
    """Build the models (seeded), start from ``--init-from`` or resume from ``run/unet.pt``; models,
    optimizer state and EMA copies (fp32) live on ``place``."""
    import torch

    from mudi.toy.model import build_text_encoder, build_tokenizer, build_unet, load_config, training_scheduler

    cfg = load_config(args.model_config)
    torch.manual_seed(args.seed + 2)
    unet, te, tok, sched = build_unet(cfg), build_text_encoder(cfg), build_tokenizer(), training_scheduler()
    ck = run / "unet.pt"
    init = None if ck.exists() else init_weights(args, "unet.pt")  # a resume loads ck instead
    if init is not None:  # start from the previous run's EMA weights
        unet.load_state_dict(init["ema_unet"])
        te.load_state_dict(init["ema_te"])
    place.model(unet)
    place.model(te)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    state = UnetRun(unet, te, tok, sched, opt, EMA(unet, args.ema), EMA(te, args.ema),
                    np.random.default_rng(args.seed + 3), params, place)
    if ck.exists():
        s = torch.load(ck, weights_only=False, map_location="cpu")  # our own checkpoint, written by this script
        unet.load_state_dict(s["unet"])
        te.load_state_dict(s["te"])
        state.ema_u.model.load_state_dict(s["ema_unet"])
        state.ema_t.model.load_state_dict(s["ema_te"])
        opt.load_state_dict(s["opt"])
        state.step = s["step"]
        state.rng.bit_generator.state = s["rng"]
        torch.set_rng_state(s["torch_rng"])
        log(run, f"resumed unet training at step {state.step}")
    return state


def loss_weights(sched, min_snr_gamma: float):
    """Per-timestep loss weights for the epsilon and the v target.

    With ``min_snr_gamma`` > 0: min-SNR weighting. Otherwise plain losses: with the v target,
    min-SNR weights the high-noise steps by ~SNR (0.005 at t = 999); on 16 x 16 latents those
    steps decide layout and object count, and the stage-1 model drew fragmented objects, so
    stage 2 trains them at full weight.
    """
    import torch

    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    if min_snr_gamma > 0:
        clamped = torch.clamp(snr, max=min_snr_gamma)
        return clamped / snr, clamped / (snr + 1)
    ones = torch.ones_like(snr)
    return ones, ones


def learning_rate(step: int, args) -> float:
    """Warm-up, then (between --lr-decay-start and --lr-decay-end) a linear anneal to 10 %."""
    lr = args.lr * min(1.0, (step + 1) / args.warmup)
    if args.lr_decay_end > args.lr_decay_start and step >= args.lr_decay_start:
        frac = min(1.0, (step - args.lr_decay_start) / (args.lr_decay_end - args.lr_decay_start))
        lr *= 1.0 - 0.9 * frac
    return lr


def unet_step(state: UnetRun, batch, weights, args) -> tuple[float, float]:
    """One optimizer step on ``batch`` (indices, token ids, clean latents); returns (batch mse, lr)."""
    import torch
    import torch.nn.functional as F

    ids, z = batch
    noise = torch.randn_like(z)  # CPU draws (global generator), then moved: same order on every device
    t = torch.randint(0, state.sched.config.num_train_timesteps, (len(z),))
    ids, z, noise, t = (state.place.tensor(x) for x in (ids, z, noise, t))
    zt = state.sched.add_noise(z, noise, t)
    lr = learning_rate(state.step, args)
    for gparam in state.opt.param_groups:
        gparam["lr"] = lr
    with state.place.autocast():
        pred = state.unet(zt, t, state.te(ids).last_hidden_state).sample.float()
    # the shipped model was first trained with the epsilon target (--unet-eps-steps), then v
    if state.step < args.unet_eps_steps:
        target, loss_w = noise, weights[0]
    else:
        target, loss_w = state.sched.get_velocity(z, noise, t), weights[1]
    per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    loss = (per * loss_w[t]).mean()
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.params, 1.0)
    state.opt.step()
    state.step += 1
    decay = min(args.ema, (1 + state.step) / (10 + state.step))
    state.ema_u.update(state.unet, decay)
    state.ema_t.update(state.te, decay)
    return per.mean().item(), lr


def draw_batch(state: UnetRun, scenes, lat_mean, lat_std, scale: float, args):
    """Token ids and sampled, scaled latents of a random batch (captions drawn per step)."""
    import torch

    idx = state.rng.integers(0, len(scenes), args.batch)
    caps = [captions.caption(scenes[i], state.rng, p_made_up=args.p_made_up) for i in idx]
    caps = ["" if state.rng.random() < args.p_uncond else c for c in caps]
    tok = state.tok
    ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    it = torch.from_numpy(idx)
    z = (lat_mean[it].float() + lat_std[it].float() * torch.randn(len(idx), *lat_mean.shape[1:])) * scale
    return ids, z


def train_unet(run: Path, vae, lat_mean, lat_std, scale: float, scenes, args, place: Placement = Placement()):
    """Train until ``--unet-steps`` or ``--deadline``; returns (EMA unet, EMA text encoder, tokenizer,
    steps, running mse)."""
    state = setup_unet_run(run, args, place)
    weights = tuple(place.tensor(w) for w in loss_weights(state.sched, args.min_snr_gamma))
    state.unet.train()
    state.te.train()
    t0 = time.time()
    ck = run / "unet.pt"
    while state.step < args.unet_steps and not deadline_passed(args.deadline):
        mse, lr = unet_step(state, draw_batch(state, scenes, lat_mean, lat_std, scale, args), weights, args)
        state.loss = mse if state.loss is None else 0.98 * state.loss + 0.02 * mse
        if state.step % 25 == 0:
            log(run, f"unet step {state.step}/{args.unet_steps} mse {state.loss:.4f} lr {lr:.2e} "
                 f"{(time.time() - t0) / 25:.2f}s/step")
            t0 = time.time()
        if state.step % args.ckpt_every == 0:
            save_atomic_torch(state.state(), ck)
        if args.sample_every and state.step % args.sample_every == 0:
            pipe = build_pipeline(vae, state.ema_u.model, state.ema_t.model, state.tok)
            sample_grid(pipe, GRID_CAPTIONS[:6], run / f"samples_{state.step:06d}.png", n_per=4)
            state.unet.train()
            state.te.train()
    save_atomic_torch(state.state(), ck)
    log(run, f"unet training stopped at step {state.step} (mse {state.loss})")
    return state.ema_u.model, state.ema_t.model, state.tok, state.step, state.loss

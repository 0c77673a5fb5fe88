"""Mean-shifted initialization on the flow-matching families (FLUX.1, SD3, FLUX.2 [klein],
Qwen-Image): the rule ``(1 − σ_start)·γ·z_m + σ_start·ε`` recomputed by hand, and exactly what the
pipeline's first transformer call receives (latents, packed/patchified as each pipeline takes them,
and the timestep of σ_start)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mudi.cli import main
from mudi.generate.init import DEFAULT_SIGMA_START, mean_shifted_latents, render_canvas
from mudi.models.families import family_of
from mudi.models.families.starts import unshifted_sigma

from test_init import LAYOUT, PHOTOS, RES

STEPS = 4
FAMILIES = ["flux", "sd3", "flux2-klein", "qwen-image"]
#: the pipeline's transformer reads timestep / 1000 (SD3's reads the scheduler's timestep as is)
PER_MILLE = {"flux", "flux2-klein", "qwen-image"}


@pytest.fixture(scope="module")
def pipes(tiny_models):
    from mudi.models.loading import load_pipeline

    out = {}
    for name in FAMILIES:
        pipe = load_pipeline(str(tiny_models / name))
        pipe.set_progress_bar_config(disable=True)
        out[name] = pipe
    return out


def first_call(pipe, **kw):
    """The first transformer call's hidden states and timestep during ``pipe(**kw)``."""
    seen = {}
    forward = pipe.transformer.forward

    def spy(*args, **kwargs):
        seen.setdefault("x", kwargs["hidden_states"].detach().clone())
        seen.setdefault("t", kwargs["timestep"].detach().clone())
        return forward(*args, **kwargs)

    pipe.transformer.forward = spy
    try:
        pipe(prompt="a photo of olis corgi", num_inference_steps=STEPS, height=RES, width=RES, output_type="latent",
             guidance_scale=1.0, **kw)  # SD3: no CFG, so the batch is the one image
    finally:
        del pipe.transformer.forward
    return seen


def _encode_by_hand(pipe, name, px, g):
    """The VAE sample of ``px`` normalized as the family's pipeline normalizes latents, by hand."""
    cfg = pipe.vae.config
    if name == "qwen-image":  # a video VAE: one frame; per-channel latents_mean / latents_std
        z = pipe.vae.encode(px[:, :, None]).latent_dist.sample(generator=g)[:, :, 0]
        return (z - torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)) / torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
    z = pipe.vae.encode(px).latent_dist.sample(generator=g)
    if name == "flux2-klein":  # batch-norm statistics per channel of the 2×2 patch
        b, c, h, w = z.shape
        patches = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + cfg.batch_norm_eps)
        patches = (patches - mean) / std
        return patches.view(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
    return (z - cfg.shift_factor) * cfg.scaling_factor


def _noise_by_hand(pipe, name, g):
    c = 16 if name != "flux2-klein" else pipe.vae.config.latent_channels
    h = RES // 8
    if name == "flux2-klein":  # the pipeline draws its noise 2×2-patchified
        eps = torch.randn((1, 4 * c, h // 2, h // 2), generator=g)
        return eps.view(1, c, 2, 2, h // 2, h // 2).permute(0, 1, 4, 2, 5, 3).reshape(1, c, h, h)
    return torch.randn((1, c, h, h), generator=g)


def by_hand(pipe, seed, gamma, sigma, name="flux"):
    """``(1 − σ)·γ·z⊙M + σ·ε`` from the VAE, the family's normalization and the mask, by hand."""
    g = torch.Generator().manual_seed(seed)
    eps = _noise_by_hand(pipe, name, g)
    canvas, mask, _ = render_canvas(PHOTOS, LAYOUT, RES, RES)
    px = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        z = _encode_by_hand(pipe, name, px, g)
    m = (F.avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], 8) >= 0.5).float()
    return (1 - sigma) * gamma * z * m + sigma * eps


def tokens(name, latents):
    """What the transformer reads from the pipeline's ``latents=`` (FLUX.2 packs its patchified latents)."""
    if name != "flux2-klein":
        return latents
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline._pack_latents(latents)


def _mu(pipe, name):
    """The shift ``mu`` of the pipeline's own schedule at RES and STEPS (None: a fixed shift)."""
    if name == "sd3":
        return None
    if name == "flux2-klein":
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu((RES // 16) ** 2, STEPS)
    return family_of(pipe).training_objective(pipe, RES).mu


@pytest.mark.parametrize("name", FAMILIES)
def test_flow_init_reaches_the_sampler_exactly(pipes, name):
    pipe = pipes[name]
    fam = family_of(pipe)
    init = mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=3.0, generator=torch.Generator().manual_seed(4),
                                height=RES, width=RES, num_inference_steps=STEPS, sigma_start=0.9)
    assert init.sigma == pytest.approx(0.9, abs=1e-6) and init.init_noise_sigma == 1.0
    torch.testing.assert_close(init.x_T, by_hand(pipe, 4, 3.0, init.sigma, name), atol=1e-5, rtol=1e-5)
    assert torch.equal(init.x_T, ((1 - init.sigma) * (3.0 * init.z * init.latent_mask) + init.sigma * init.noise))
    assert torch.equal(init.latents, fam.pipeline_latents(pipe, init.x_T))
    seen = first_call(pipe, latents=init.latents, **init.pipeline_kwargs)
    assert torch.equal(seen["x"], tokens(name, init.latents))  # the loop starts from exactly x (packed for FLUX.1)
    dtype = init.latents.dtype
    want_t = init.timestep.expand(1).to(dtype) / 1000 if name in PER_MILLE else init.timestep.expand(1)
    assert torch.equal(seen["t"], want_t)  # ... at σ_start
    # the schedule: N steps from σ_start down, the pipeline's sigmas scaled by the unshifted σ_start
    sigmas = init.pipeline_kwargs["sigmas"]
    assert len(sigmas) == STEPS and np.allclose(sigmas / sigmas[0], np.linspace(1.0, 1 / STEPS, STEPS))
    if not pipe.scheduler.config.get("shift_terminal"):  # Qwen-Image's stretch: u found by bisection
        assert sigmas[0] == pytest.approx(unshifted_sigma(pipe.scheduler.config, init.sigma, _mu(pipe, name)), rel=1e-5)
    sch = copy.deepcopy(pipe.scheduler)  # the pipeline's own set_timesteps call on these sigmas starts at σ_start
    mu = _mu(pipe, name)
    sch.set_timesteps(sigmas=sigmas, **({} if mu is None else {"mu": mu}))
    assert float(sch.sigmas[0]) == init.sigma and len(sch.timesteps) == STEPS


@pytest.mark.parametrize("name", FAMILIES)
def test_flow_init_shares_the_pipelines_noise(pipes, name):
    """--init none and --init mudi share ε for a seed; at σ_start = 1 with γ = 0 they are the same start."""
    pipe = pipes[name]
    fam = family_of(pipe)
    none = first_call(pipe, generator=torch.Generator().manual_seed(9))
    init = mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=0.0, generator=torch.Generator().manual_seed(9),
                                height=RES, width=RES, num_inference_steps=STEPS, sigma_start=1.0)
    assert torch.equal(none["x"], tokens(name, fam.pipeline_latents(pipe, init.noise)))
    assert torch.equal(none["x"], tokens(name, init.latents))


@pytest.mark.parametrize("name", ["flux", "flux2-klein", "qwen-image"])
def test_gamma_and_sigma_scale_the_signal(pipes, name):
    pipe = pipes[name]

    def run(gamma, sigma=DEFAULT_SIGMA_START):
        return mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=gamma, generator=torch.Generator().manual_seed(5),
                                    height=RES, width=RES, num_inference_steps=STEPS, sigma_start=sigma)

    r0, r3 = run(0.0), run(3.0)
    torch.testing.assert_close(r3.x_T - r0.x_T, (1 - r0.sigma) * 3 * r0.z * r0.latent_mask, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(r0.x_T, r0.sigma * r0.noise)
    assert r0.sigma == pytest.approx(DEFAULT_SIGMA_START, abs=1e-6)


def test_generate_init_mudi_on_flux_from_the_cli(tiny_models, data_dir, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--base", str(tiny_models / "flux"), "--subjects",
                 str(data_dir / "subjects" / "dog6_and_dog2"), "--prompt", "a photo of {a} and {b}", "--out", str(out),
                 "--n", "1", "--steps", "2", "--init", "mudi", "--init-sigma", "0.8", "--save-init",
                 "--resolution", "64", "--no-progress"]) == 0
    side = json.loads((out / "0000.json").read_text())
    assert side["init"] == "mudi" and side["init_sigma"] == 0.8 and len(side["layout"]) == 2
    assert (out / "0000_init.png").is_file() and (out / "0000.png").is_file()
    assert main(["generate", "--base", str(tiny_models / "flux"), "--subjects", str(data_dir / "subjects" / "dog6_and_dog2"),
                 "--prompt", "{a}", "--out", str(tmp_path / "bad"), "--init-sigma", "0", "--no-progress"]) == 2

"""Mean-shifted initialization on the flow-matching families (FLUX.1, SD3): the rule
``(1 − σ_start)·γ·z_m + σ_start·ε`` recomputed by hand, and exactly what the pipeline's first
transformer call receives (latents, packed for FLUX.1, and the timestep of σ_start)."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def pipes(tiny_models):
    from mudi.models.loading import load_pipeline

    out = {}
    for name in ("flux", "sd3"):
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


def by_hand(pipe, seed, gamma, sigma):
    """``(1 − σ)·γ·z⊙M + σ·ε`` from the VAE, the shift/scale normalization and the mask, by hand."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((1, 16, RES // 8, RES // 8), generator=g)
    canvas, mask, _ = render_canvas(PHOTOS, LAYOUT, RES, RES)
    px = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        z = pipe.vae.encode(px).latent_dist.sample(generator=g)
    cfg = pipe.vae.config
    z = (z - cfg.shift_factor) * cfg.scaling_factor
    m = (F.avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], 8) >= 0.5).float()
    return (1 - sigma) * gamma * z * m + sigma * eps


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_flow_init_reaches_the_sampler_exactly(pipes, name):
    pipe = pipes[name]
    fam = family_of(pipe)
    init = mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=3.0, generator=torch.Generator().manual_seed(4),
                                height=RES, width=RES, num_inference_steps=STEPS, sigma_start=0.9)
    assert init.sigma == pytest.approx(0.9, abs=1e-6) and init.init_noise_sigma == 1.0
    torch.testing.assert_close(init.x_T, by_hand(pipe, 4, 3.0, init.sigma), atol=1e-5, rtol=1e-5)
    assert torch.equal(init.x_T, ((1 - init.sigma) * (3.0 * init.z * init.latent_mask) + init.sigma * init.noise))
    assert torch.equal(init.latents, fam.pipeline_latents(pipe, init.x_T))
    seen = first_call(pipe, latents=init.latents, **init.pipeline_kwargs)
    assert torch.equal(seen["x"], init.latents)  # the loop starts from exactly x (packed for FLUX.1)
    dtype = init.latents.dtype
    want_t = init.timestep.expand(1).to(dtype) / 1000 if name == "flux" else init.timestep.expand(1)
    assert torch.equal(seen["t"], want_t)  # ... at σ_start
    # the schedule: N steps from σ_start down, the pipeline's sigmas scaled by the unshifted σ_start
    sigmas = init.pipeline_kwargs["sigmas"]
    assert len(sigmas) == STEPS and sigmas[0] == pytest.approx(unshifted_sigma(pipe.scheduler.config, init.sigma, (
        None if name == "sd3" else fam.training_objective(pipe, RES).mu)), rel=1e-5)


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_flow_init_shares_the_pipelines_noise(pipes, name):
    """--init none and --init mudi share ε for a seed; at σ_start = 1 with γ = 0 they are the same start."""
    pipe = pipes[name]
    fam = family_of(pipe)
    none = first_call(pipe, generator=torch.Generator().manual_seed(9))
    init = mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=0.0, generator=torch.Generator().manual_seed(9),
                                height=RES, width=RES, num_inference_steps=STEPS, sigma_start=1.0)
    assert torch.equal(none["x"], fam.pipeline_latents(pipe, init.noise))
    assert torch.equal(none["x"], init.latents)


def test_gamma_and_sigma_scale_the_signal(pipes):
    pipe = pipes["flux"]

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

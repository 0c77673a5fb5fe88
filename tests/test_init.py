"""mudi.generate.init: the mean-shifted initial latents against METHOD.md §4, recomputed by hand, and what
the pipeline's denoising loop actually receives (for Euler, Euler-a, DDIM, DPM-Solver, PNDM, UniPC)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mudi.errors import MudiError
from mudi.generate.sampling import set_scheduler
from mudi.generate.init import mean_shifted_latents, render_canvas, schedule_start
from mudi.generate.layout import LayoutBox
from mudi.subjects import SegmentedPhoto

RES = 64
STEPS = 3


def make_photo(seed: int, w: int = 40, h: int = 56) -> SegmentedPhoto:
    """A random-colour photo with an elliptic subject mask."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - w / 2) / (w * 0.4)) ** 2 + ((yy - h / 2) / (h * 0.45)) ** 2 <= 1
    return SegmentedPhoto(img, mask, "photo", path=f"<mem{seed}>")  # type: ignore[arg-type]


PHOTOS = {"a": make_photo(1), "b": make_photo(2, 60, 30)}
LAYOUT = [LayoutBox("a", (2, 8, 30, 56)), LayoutBox("b", (30, 20, 62, 44))]


@pytest.fixture(scope="module")
def pipes(tiny_models):
    from mudi.models.loading import load_pipeline

    return {name: load_pipeline(str(tiny_models / name)) for name in ("sdxl", "sd")}


def by_hand(pipe, seed, gamma, steps=STEPS):
    """Recompute x_T = add_noise(γ·s·E(canvas)⊙M, ε, t_first) from the closed-form schedules."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((1, 4, RES // 8, RES // 8), generator=g)  # drawn first, as the pipeline does
    canvas, mask, _ = render_canvas(PHOTOS, LAYOUT, RES, RES)
    px = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        z = pipe.vae.encode(px).latent_dist.sample(generator=g) * pipe.vae.config.scaling_factor
    M = (F.avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], 8) >= 0.5).float()
    sch = copy.deepcopy(pipe.scheduler)
    sch.set_timesteps(steps)
    t = sch.timesteps[0]
    if hasattr(sch, "sigmas") and type(sch).__name__.startswith("Euler"):
        sigma = sch.sigmas[0].float()
        signal, noise_scale = torch.tensor(1.0), sigma
        if sch.config.timestep_spacing in ("linspace", "trailing"):
            init_sigma = sigma
        else:
            init_sigma = (sigma**2 + 1) ** 0.5
    elif type(sch).__name__ in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        sigma = sch.sigmas[0].float()  # sigma-space value of the first step
        signal = 1 / (sigma**2 + 1) ** 0.5
        noise_scale = sigma * signal
        init_sigma = torch.tensor(1.0)
    else:  # DDIM, PNDM: alpha-bar of the first timestep
        abar = sch.alphas_cumprod[int(t)].float()
        signal, noise_scale, init_sigma = abar.sqrt(), (1 - abar).sqrt(), torch.tensor(1.0)
    x_T = signal * gamma * z * M + noise_scale * eps
    return dict(x_T=x_T, eps=eps, z=z, M=M, t=t, init_sigma=float(init_sigma), noise_scale=noise_scale,
                signal=signal, canvas=canvas, mask=mask)


SCHEDULERS = [("sdxl", "default"), ("sdxl", "dpm"), ("sdxl", "ddim"), ("sdxl", "euler_a"), ("sd", "default"),
              ("sd", "euler"), ("sd", "dpm_karras"), ("sd", "unipc")]


@pytest.mark.parametrize("name, sched", SCHEDULERS)
def test_latents_match_formula_and_first_model_input(pipes, name, sched):
    pipe = pipes[name]
    old = pipe.scheduler
    set_scheduler(pipe, sched)
    try:
        ref = by_hand(pipe, seed=11, gamma=3.0)
        before = copy.deepcopy(pipe.scheduler.__dict__.get("timesteps"))
        init = mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=3.0, generator=torch.Generator().manual_seed(11),
                                    height=RES, width=RES, num_inference_steps=STEPS)
        # the pipeline's own scheduler is untouched (a copy was set up)
        after = pipe.scheduler.__dict__.get("timesteps")
        assert (before is None and after is None) or torch.equal(before, after)
        assert init.init_noise_sigma == pytest.approx(ref["init_sigma"], rel=1e-6)
        assert int(init.timestep) == int(ref["t"])
        torch.testing.assert_close(init.noise, ref["eps"])
        torch.testing.assert_close(init.z, ref["z"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(init.latent_mask, ref["M"][0, 0])
        torch.testing.assert_close(init.x_T, ref["x_T"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(init.latents * ref["init_sigma"], ref["x_T"], atol=1e-5, rtol=1e-5)
        # outside M: pure scaled noise (zero shift)
        out = ref["M"].expand_as(ref["x_T"]) == 0
        assert out.any() and (~out).any()
        torch.testing.assert_close(init.x_T[out], (ref["noise_scale"] * ref["eps"])[out], atol=1e-6, rtol=1e-6)
        # inside M the shift is signal(t)·γ·s·E(canvas)
        torch.testing.assert_close(init.x_T[~out], (ref["noise_scale"] * ref["eps"] + ref["signal"] * 3.0 * ref["z"])[~out],
                                   atol=1e-5, rtol=1e-5)

        # what the denoising loop starts from after the pipeline's own `* init_noise_sigma`
        seen: dict[str, torch.Tensor] = {}
        orig = pipe.scheduler.scale_model_input

        def spy(sample, timestep=None, *a, **k):
            seen.setdefault("sample", sample.detach().clone())
            seen.setdefault("t", timestep)
            return orig(sample, timestep, *a, **k)

        unet_in: dict[str, torch.Tensor] = {}
        def grab(mod, args, kwargs):
            unet_in.setdefault("x", (args[0] if args else kwargs["sample"]).detach().clone())

        hook = pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
        pipe.scheduler.scale_model_input = spy
        try:
            pipe("olis corgi and hta chow chow", latents=init.latents, num_inference_steps=STEPS, height=RES, width=RES,
                 guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0))
        finally:
            del pipe.scheduler.scale_model_input
            hook.remove()
        torch.testing.assert_close(seen["sample"], ref["x_T"], atol=1e-5, rtol=1e-5)
        assert int(seen["t"]) == int(ref["t"])
        sch = copy.deepcopy(pipe.scheduler)
        sch.set_timesteps(STEPS)
        torch.testing.assert_close(unet_in["x"], sch.scale_model_input(ref["x_T"].clone(), sch.timesteps[0]),
                                   atol=1e-5, rtol=1e-5)
    finally:
        pipe.scheduler = old


def test_gamma_scales_the_shift_linearly(pipes):
    pipe = pipes["sdxl"]

    def run(gamma):
        return mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=gamma, generator=torch.Generator().manual_seed(5),
                                    height=RES, width=RES, num_inference_steps=STEPS)

    r0, r1, r3 = run(0.0), run(1.0), run(3.0)
    torch.testing.assert_close(r3.x_T - r0.x_T, 3 * (r1.x_T - r0.x_T), atol=1e-5, rtol=1e-5)
    # Euler: the shift is exactly γ·s·E(canvas)⊙M (no alpha factor in sigma space)
    torch.testing.assert_close(r3.x_T - r0.x_T, 3 * r0.z * r0.latent_mask, atol=1e-5, rtol=1e-5)
    _, t_first, _ = schedule_start(pipe.scheduler, STEPS)
    sch = copy.deepcopy(pipe.scheduler)
    sch.set_timesteps(STEPS)
    torch.testing.assert_close(r0.x_T, sch.sigmas[0] * r0.noise)  # γ = 0: only noise at t_first
    assert not torch.allclose(r1.latents, r3.latents)


def test_noise_equals_the_pipelines_own_noise_for_the_same_seed(pipes):
    """--init none and --init mudi share ε for a seed (the pipeline's randn_tensor call)."""
    pipe = pipes["sd"]
    seen = {}
    orig = pipe.scheduler.scale_model_input

    def spy(sample, timestep=None, *a, **k):
        seen.setdefault("x", sample.detach().clone())
        return orig(sample, timestep, *a, **k)

    pipe.scheduler.scale_model_input = spy
    try:
        pipe("olis corgi", num_inference_steps=2, height=RES, width=RES, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(9))
    finally:
        del pipe.scheduler.scale_model_input
    init = mean_shifted_latents(pipe, PHOTOS, LAYOUT, generator=torch.Generator().manual_seed(9), height=RES,
                                width=RES, num_inference_steps=2)
    torch.testing.assert_close(seen["x"], init.noise * init.init_noise_sigma)


def test_render_canvas_pastes_mask_pixels_only_on_white():
    canvas, mask, drawn = render_canvas(PHOTOS, LAYOUT, RES, RES)
    arr = np.asarray(canvas)
    assert canvas.size == (RES, RES)
    assert (arr[~mask] == 255).all()
    assert mask.any() and not mask.all()
    # every pasted box keeps the photo's mask-box aspect ratio and lies in its layout box
    for placed, given, key in zip(drawn, LAYOUT, ["a", "b"]):
        x0, y0, x1, y1 = placed.box
        gx0, gy0, gx1, gy1 = given.box
        assert gx0 <= x0 < x1 <= gx1 and gy0 <= y0 < y1 <= gy1
        ph = PHOTOS[key]
        ys, xs = np.nonzero(ph.mask)
        aspect = (xs.max() + 1 - xs.min()) / (ys.max() + 1 - ys.min())
        assert (x1 - x0) / (y1 - y0) == pytest.approx(aspect, rel=0.08)
        assert mask[y0:y1, x0:x1].any()
    # a single subject covering a box exactly: pixels equal the resized photo
    solid = SegmentedPhoto(np.full((10, 10, 3), 7, np.uint8), np.ones((10, 10), bool), "", "<m>")  # type: ignore[arg-type]
    canvas, mask, _ = render_canvas({"x": solid}, [("x", (8, 16, 24, 32))], 32, 48)
    arr = np.asarray(canvas)
    assert arr.shape == (48, 32, 3)
    assert mask.sum() == 16 * 16 and (arr[16:32, 8:24] == 7).all() and (arr[~mask] == 255).all()


def test_bad_inputs(pipes):
    pipe = pipes["sd"]
    with pytest.raises(MudiError, match="multiples of the VAE factor"):
        mean_shifted_latents(pipe, PHOTOS, LAYOUT, height=60, width=64, num_inference_steps=2)
    with pytest.raises(MudiError, match="gamma"):
        mean_shifted_latents(pipe, PHOTOS, LAYOUT, gamma=-1, height=64, width=64, num_inference_steps=2)
    with pytest.raises(MudiError, match="no photo"):
        mean_shifted_latents(pipe, {"a": PHOTOS["a"]}, LAYOUT, height=64, width=64, num_inference_steps=2)


def test_canvas_from_the_real_reference_photos(data_dir):
    from mudi.generate.layout import auto_layout
    from mudi.subjects import SubjectSet, mask_bbox

    sset = SubjectSet.load(data_dir / "subjects" / "dog6_and_dog2")
    photos = {k: sset.photos(k)[0] for k in sset.keys}
    dims = {k: (lambda b: (b[2] - b[0], b[3] - b[1]))(mask_bbox(p.mask)) for k, p in photos.items()}
    layout = auto_layout([(k, dims[k]) for k in sset.keys], 256, 256, rng=0)
    canvas, mask, drawn = render_canvas(photos, layout, 256, 256)
    arr = np.asarray(canvas)
    assert (arr[~mask] == 255).all()
    assert 0.1 < mask.mean() < 0.6
    for p in drawn:  # every subject shows up inside its own box
        x0, y0, x1, y1 = p.box
        assert mask[y0:y1, x0:x1].mean() > 0.3
        assert arr[y0:y1, x0:x1][mask[y0:y1, x0:x1]].mean() < 250


def test_vae_normalization_variants(pipes):
    """shift_factor and latents_mean/std VAEs are normalized the way their pipelines decode."""
    import copy as _copy

    from PIL import Image

    from mudi.generate.init import encode_canvas
    from mudi.models.families import family_of

    family = family_of(pipes["sd"])
    canvas = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    vae = _copy.deepcopy(pipes["sd"].vae)
    s = vae.config.scaling_factor
    raw = encode_canvas(vae, canvas, torch.Generator().manual_seed(1), torch.device("cpu"), family=family) / s
    vae.register_to_config(shift_factor=0.25)
    shifted = encode_canvas(vae, canvas, torch.Generator().manual_seed(1), torch.device("cpu"), family=family)
    torch.testing.assert_close(shifted, (raw - 0.25) * s)
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 1.5]
    vae.register_to_config(shift_factor=None, latents_mean=mean, latents_std=std)
    normed = encode_canvas(vae, canvas, torch.Generator().manual_seed(1), torch.device("cpu"), family=family)
    m, sd = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    torch.testing.assert_close(normed, (raw - m) * s / sd)
    # an fp16 VAE that asks for upcasting (SDXL's) encodes in fp32 and is put back to fp16
    vae16 = _copy.deepcopy(pipes["sdxl"].vae).half()
    assert vae16.config.force_upcast
    z = encode_canvas(vae16, canvas, torch.Generator().manual_seed(1), torch.device("cpu"), family=family)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert next(vae16.parameters()).dtype == torch.float16

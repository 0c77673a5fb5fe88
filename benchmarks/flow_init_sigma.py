"""The figures behind ``--init-sigma 0.93`` (flow-matching families, ``mudi generate --init mudi``).

SDXL's mean-shifted init noises γ·z_m to the first timestep of its schedule; a flow-matching
sampler entered at σ gets ``(1 − σ)·γ·z_m + σ·ε``. Equal signal-to-noise ratio means
``(1 − σ)/σ = √(ᾱ_t/(1 − ᾱ_t))``. Prints, for SDXL's first timestep at 50 / 30 steps and at t = 999,
that ratio and the σ that matches it, and where σ = 0.93 puts FLUX.1's and SD3's samplers
(the unshifted σ handed to the pipeline at 1024 px).

    python benchmarks/flow_init_sigma.py
"""

from __future__ import annotations

import math


def main() -> None:
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    from mudi.models.families.objectives import dynamic_shift_mu
    from mudi.models.families.starts import unshifted_sigma

    sdxl = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="leading", steps_offset=1)
    rows = []
    for steps in (50, 30):
        sdxl.set_timesteps(steps)
        rows.append((f"SDXL, {steps} steps", int(sdxl.timesteps[0])))
    rows.append(("t = 999", 999))
    for what, t in rows:
        a = float(sdxl.alphas_cumprod[t])
        snr = math.sqrt(a / (1 - a))
        print(f"{what}: first timestep {t}, sqrt(abar/(1-abar)) = {snr:.4f}, flow sigma with that ratio = "
              f"{1 / (1 + snr):.4f}")
    sigma = 0.93
    print(f"sigma_start {sigma}: (1-sigma)/sigma = {(1 - sigma) / sigma:.4f}")
    flux = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)
    mu = dynamic_shift_mu(flux.config, (1024 // 16) ** 2)
    print(f"FLUX.1 at 1024 px (mu {mu:.3f}): unshifted sigma handed to the pipeline {unshifted_sigma(flux.config, sigma, mu):.4f}")
    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    print(f"SD3.5 (shift 3): unshifted sigma handed to the pipeline {unshifted_sigma(sd3.config, sigma, None):.4f}")


if __name__ == "__main__":
    main()

"""Where the toy trainer runs (``--device``, ``--precision``) and what it starts from (``--init-from``).

The trainer keeps every random draw on the CPU: batch indices and captions come from numpy, VAE
samples, latent samples, noise and timesteps from torch's global CPU generator, in the same order
on every device. Only the finished tensors move to the device, so a CUDA run sees the same data,
noise and timesteps as a CPU run with the same seed (its weights still differ in the last bits:
other kernels). On the CPU in fp32 every move is a no-op and the run is the one the shipped model
came from.

``--init-from`` takes a previous run folder (``vae.pt``, ``unet.pt``: the EMA weights of its last
checkpoint) or an exported pipeline folder such as ``src/mudi/assets/toy_base`` (its safetensors;
the shipped weights are fp16 and are widened to fp32 for training).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from mudi.errors import MudiError

#: ``--precision`` values: fp32 everywhere, or bf16 autocast around the forward passes.
PRECISIONS = ("fp32", "bf16")

#: Files of an exported pipeline that ``--init-from`` reads (module -> weights file).
PIPELINE_WEIGHTS = {"vae": "vae/diffusion_pytorch_model.safetensors",
                    "unet": "unet/diffusion_pytorch_model.safetensors",
                    "text_encoder": "text_encoder/model.safetensors"}


@dataclass(frozen=True)
class Placement:
    """The device models and batches live on, and the autocast precision of the forward passes.

    Master weights, optimizer state and EMA copies stay fp32 in every precision; losses are
    computed in fp32.
    """

    device: str = "cpu"
    precision: str = "fp32"

    def model(self, module):
        """``module`` moved to the device (in place; returned for chaining)."""
        return module.to(self.device)

    def tensor(self, tensor):
        """``tensor`` on the device (the same tensor when it is already there)."""
        return tensor.to(self.device)

    def autocast(self):
        """Context for forward passes: bf16 autocast, or nothing in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)


def resolve_placement(device: str, precision: str) -> Placement:
    """Check ``--device`` / ``--precision`` against this machine.

    Raises:
        MudiError: not ``cpu`` / ``cuda`` / ``cuda:N``, CUDA missing, or bf16 unsupported there.
    """
    import torch

    from mudi.runtime import pick_device

    if precision not in PRECISIONS:
        raise MudiError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    dev = pick_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise MudiError(f"--device {device}: the toy trainer runs on cpu or cuda (cuda:N).")
    if dev.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise MudiError(f"--device {device}: this GPU has no bf16; use --precision fp32.")
    return Placement(str(dev), precision)


def as_fp32(posterior):
    """A VAE posterior with fp32 parameters (itself when it already is, as always without autocast)."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if posterior.parameters.dtype == torch.float32:
        return posterior
    return DiagonalGaussianDistribution(posterior.parameters.float())


def is_pipeline(folder: Path) -> bool:
    """True for an exported pipeline folder (``model_index.json``), False for a run folder."""
    return (folder / "model_index.json").is_file()


def _pipeline_weights(folder: Path) -> dict[str, dict]:
    from safetensors.torch import load_file

    return {name: load_file(folder / rel) for name, rel in PIPELINE_WEIGHTS.items()}


def load_init(folder: Path, name: str) -> dict:
    """The weights ``--init-from`` gives the stage that would checkpoint to ``name``.

    ``vae.pt`` -> ``{"model": ...}``; ``unet.pt`` -> ``{"ema_unet": ..., "ema_te": ...}``, from a
    run folder's checkpoint or a pipeline folder's safetensors alike.
    """
    import torch

    if not is_pipeline(folder):
        return torch.load(folder / name, weights_only=False, map_location="cpu")  # our own checkpoint
    w = _pipeline_weights(folder)
    return {"model": w["vae"]} if name == "vae.pt" else {"ema_unet": w["unet"], "ema_te": w["text_encoder"]}


def check_init_from(folder: Path, cfg) -> None:
    """Validate ``--init-from`` before anything is written: files present, weights fit ``cfg``.

    Raises:
        MudiError: neither a run folder nor a pipeline folder, or weights of another architecture.
    """
    from mudi.toy.model import build_text_encoder, build_unet, build_vae

    if is_pipeline(folder):
        need = list(PIPELINE_WEIGHTS.values())
    else:
        need = ["vae.pt", "unet.pt"]
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise MudiError(f"--init-from {folder}: {', '.join(missing)} not found; give a previous run folder "
                        f"(vae.pt, unet.pt) or an exported pipeline folder (model_index.json + safetensors).")
    vae_sd, unet_sd = load_init(folder, "vae.pt"), load_init(folder, "unet.pt")
    pairs = (("VAE", build_vae(cfg), vae_sd["model"]), ("UNet", build_unet(cfg), unet_sd["ema_unet"]),
             ("text encoder", build_text_encoder(cfg), unet_sd["ema_te"]))
    for label, model, sd in pairs:
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in sd.items()}
        if want != got:
            bad = sorted(set(want.items()) ^ set(got.items()))[:3]
            raise MudiError(f"--init-from {folder}: its {label} weights do not fit the model being trained "
                            f"(first differences: {bad}); pass the --model-config it was trained with.")

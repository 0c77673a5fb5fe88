"""The demo's iterative-training row (``mudi_iterative``): MuDI + one round of iterative training.

``lora_iterative/`` is a ``mudi train --rounds 1`` folder made by :func:`mudi.iterate`, the
product's own rounds, started from the ``mudi`` row's Seg-Mix LoRA (``lora_segmix/``, adopted as
round 0 with ``iterate(first=...)``, so it is not trained twice):

1. round 1 generates ``images_per_prompt · ROUND_IMAGES_SHARE`` images per demo prompt with that
   LoRA and the demo's initialization settings, at generation seeds ``seed + 1000`` onwards
   (:data:`mudi.workflows.rounds.SEED_STRIDE`) -- the evaluation images use seeds ``seed`` to
   ``seed + 4 · images_per_prompt - 1``, so no evaluated image is ever trained on;
2. D&C with the toy detector and embedder scores them; the successes (right count, D&C at or above
   the demo's success threshold) are kept with their detection-box masks;
3. a Seg-Mix fine-tune of ``FINETUNE_SHARE`` of the demo's steps from the round-0 LoRA on the
   subject photos, Seg-Mix composites and the kept images (``lora_iterative/rounds/1/train``).

The final LoRA is ``lora_iterative/pytorch_lora_weights.safetensors`` (plus ``rounds.json``: the
round's images, kept images, mean D&C and success rate); it samples like every other row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mudi.settings import RunOptions

#: Round images per demo prompt, as a fraction of the demo's ``images_per_prompt``.
ROUND_IMAGES_SHARE = 1.0
#: Fine-tune length of the round, as a fraction of the demo's training steps (as modular_segmix's).
FINETUNE_SHARE = 0.2
#: Rounds of iterative training in the demo row.
ROUNDS = 1


def train_iterative(config, options: RunOptions, out: Path, base: Path, *, train_config: Callable,
                    train_segmix: Callable[[], None], sampling, done: str, pipe_factory: Callable) -> None:
    """Write ``out/lora_iterative`` (see the module docstring).

    ``train_config(config, out, base, mix, lora_dir, **changes)`` gives the demo's `mudi train`
    settings; ``train_segmix()`` trains ``out/lora_segmix`` (called when it is not finished yet);
    ``sampling`` is the mudi row's GenerateConfig (the rounds sample as it does: same γ, fill,
    steps, guidance; iterate sets the seed to seed + 1000 · round, the LoRA, prompts, count and
    folder per round); ``done`` names a finished folder's marker; ``pipe_factory()`` loads the toy
    base pipeline."""
    from mudi import toy
    from mudi.evaluate import EvaluateConfig
    from mudi.evaluate.models import EvalModels
    from mudi.workflows import iterate

    segmix = out / "lora_segmix"
    if not (segmix / done).exists():
        train_segmix()
        (segmix / done).write_text("ok\n")
    lora_dir = out / "lora_iterative"
    per_prompt = max(1, round(config.images_per_prompt * ROUND_IMAGES_SHARE))
    cfg = train_config(config, out, base, "segmix", lora_dir, rounds=ROUNDS,
                       round_steps=max(1, round(config.train_steps * FINETUNE_SHARE)), round_images=per_prompt,
                       round_prompts=list(toy.demo_prompts(config.subjects)), keep_threshold=-1.0)
    scoring = EvaluateConfig(detector="toy", embedder="toy", clip="none", dino_model="none", clip_i_model="none",
                             success_threshold=config.success_threshold, report=False)
    models = EvalModels(toy.ToyDetector(), toy.ToyEmbedder(), names={"detector": "toy", "embedder": "toy"})
    run = RunOptions(device="cpu", progress=options.progress, overwrite=True,
                     resume=options.resume and (lora_dir / "config.toml").is_file())
    iterate(cfg, run, generate=sampling, evaluate=scoring, pipe=pipe_factory(), eval_models=models, first=segmix)

"""The demo's modular-customization rows (``--methods modular,modular_segmix``).

- ``lora_merged/``: one DreamBooth LoRA per subject (``mudi train --only KEY --mix none``, in
  ``lora_single_<key>/``), merged by ``mudi merge`` with the concat rule (ranks stacked, so no
  subject's update is averaged away). Each single-subject LoRA trains ``train_steps / k`` steps
  (k = the number of subjects): the DreamBooth row's LoRA visits every photo of the k subjects once
  per epoch at a constant learning rate, so each subject gets ``train_steps / k`` of its steps, and
  a single-subject LoRA of that length sees each of its photos as often (and the k of them cost one
  LoRA's training time, which keeps the extension rows inside the default demo's time);
- ``lora_merged_segmix/``: the merged LoRA fine-tuned with Seg-Mix on all subjects
  (``mudi train --init-lora lora_merged --mix segmix``) for a fifth of the demo's steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mudi.settings import RunOptions

#: Fine-tune length of the modular + Seg-Mix row, as a fraction of the demo's training steps.
FINETUNE_SHARE = 0.2


def train_modular(config, options: RunOptions, out: Path, base: Path, mix: str, *, train_config: Callable,
                  train_options: Callable, done: str) -> None:
    """Write ``out/lora_<mix>`` for mix ``merged`` or ``merged_segmix`` (see the module docstring).

    ``train_config(config, out, base, mix, lora_dir, **changes)`` and ``train_options(options,
    lora_dir)`` are the demo's own `mudi train` settings; ``done`` names a finished folder's marker."""
    from mudi.train import MergeConfig, merge, train
    from mudi.subjects import SubjectSet

    DONE = done

    merged = out / "lora_merged"
    if mix == "merged_segmix":
        if not (merged / DONE).exists():
            train_modular(config, options, out, base, "merged", train_config=train_config,
                          train_options=train_options, done=done)
            (merged / DONE).write_text("ok\n")
        lora_dir = out / "lora_merged_segmix"
        steps = max(1, round(config.train_steps * FINETUNE_SHARE))
        train(train_config(config, out, base, "segmix", lora_dir, max_train_steps=steps, init_lora=str(merged)),
              train_options(options, lora_dir))
        return
    singles = []
    single_steps = max(1, config.train_steps // config.subjects)  # the DreamBooth row's steps per subject
    for subject in SubjectSet.load(out / "subjects"):
        lora_dir = out / f"lora_single_{subject.key}"
        if not (options.resume and (lora_dir / DONE).exists()):
            train(train_config(config, out, base, "none", lora_dir, only=[subject.key], max_train_steps=single_steps),
                  train_options(options, lora_dir))
            (lora_dir / DONE).write_text("ok\n")
        singles.append(str(lora_dir))
    merge(MergeConfig(loras=singles, out=str(merged), rule="concat", subjects=str(out / "subjects")),
          RunOptions(overwrite=True, device="cpu", progress=options.progress))

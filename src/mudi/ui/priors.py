"""Prior preservation from the Train tab: the class set, chosen or generated, as the CLI's fields.

The page's choice ends up as exactly what ``mudi train`` gets: ``reg = "prior"`` and
``prior_dir`` = a class-set folder in ``mudi priors``'s format, so the run folder's
``config.toml`` is the one of ``mudi train --reg prior --prior-dir DIR`` (or plain
``--prior-dir DIR``). An existing folder is checked as ``mudi train --prior-dir`` checks it (it
loads, and every subject's class has images). "Generate class images now" runs
:func:`mudi.make_class_set` with the page's base model in the background worker, into
``runs/<name>/class_set``, then trains with it; *Stop* during that phase ends it with nothing
written (class images are kept all at once, as ``mudi priors`` keeps them).
"""

from __future__ import annotations

from pathlib import Path

from mudi.errors import MudiError
from mudi.ui.common import AppContext, need
from mudi.ui.worker import CLASS_IMAGES, TRAINING

#: Where the class images come from.
EXISTING, GENERATE = "existing", "generate"
SOURCES = (("use an existing class-set folder", EXISTING), ("generate class images now", GENERATE))
#: The class-set folder inside a run folder (when the page generates it).
CLASS_SET = "class_set"


def class_set_choices(ctx: AppContext) -> list[str]:
    """The class sets in the work folder (``runs/<name>/class_set``), relative to it."""
    runs = ctx.ws.folder("runs")
    if not runs.is_dir():
        return []
    return sorted(str(p.parent.relative_to(ctx.ws.root)) for p in runs.glob(f"*/{CLASS_SET}/metadata.jsonl"))


def class_set_path(ctx: AppContext, text: str) -> Path:
    """The folder a typed class-set path names: absolute, or relative to the work folder (read only,
    like a base-model folder)."""
    path = Path(str(need((text or "").strip(), "a class-set folder (made by `mudi priors`)"))).expanduser()
    return (path if path.is_absolute() else ctx.ws.root / path).resolve()


def check_class_set(folder: Path, subjects: str) -> None:
    """The checks of ``mudi train --prior-dir``: the folder loads as a class set and has class
    images for the class of every subject of the set (MudiError saying what is wrong)."""
    from mudi.subjects import SubjectSet
    from mudi.train.priors import ClassSet

    try:
        ClassSet.load(folder).for_subjects(SubjectSet.load(subjects))
    except MudiError as exc:
        raise MudiError(f"class-set folder: {exc}") from None


def only_class_images(out: Path) -> bool:
    """True when a run folder holds nothing but the class set of an earlier start (no run yet)."""
    return out.is_dir() and [p.name for p in out.iterdir()] == [CLASS_SET]


def prior_fields(ctx: AppContext, out: Path, subjects: str, reg: str, source: str, folder: str) -> dict:
    """The TrainConfig values of the page's regularization choice (``reg``, ``prior_dir``), checked.

    ``source`` is :data:`EXISTING` (``folder`` is checked now) or :data:`GENERATE` (the class set
    will be ``out/class_set``, which must not exist yet).
    """
    if reg != "prior":
        return {"reg": reg, "prior_dir": ""}
    if source == GENERATE:
        target = out / CLASS_SET
        if target.exists():
            raise MudiError(f"{target} exists (class images of an earlier start): choose 'use an existing "
                            f"class-set folder' with runs/{out.name}/{CLASS_SET}, or another run name.")
        return {"reg": "prior", "prior_dir": str(target)}
    if source != EXISTING:
        raise MudiError(f"class images: choose one of {EXISTING!r} or {GENERATE!r}.")
    path = class_set_path(ctx, folder)
    check_class_set(path, subjects)
    return {"reg": "prior", "prior_dir": str(path)}


def class_images_config(ctx: AppContext, config, n: int):
    """The PriorsConfig that makes ``config.prior_dir`` with the run's base model: the preset's
    class-image settings, else ``mudi priors``'s defaults; ``n`` images per class. Checked
    (values, output folder, subject set, base-model folder) without loading a model."""
    import mudi
    from mudi.train.priors import check_priors_inputs

    if not n or int(n) < 1:
        raise MudiError(f"images per class: give a whole number >= 1 (got {n!r}).")
    values = dict(ctx.preset.priors)
    values.update(base=config.base, subjects=config.subjects, out=config.prior_dir, n=int(n))
    if config.resolution:
        values["resolution"] = config.resolution
    priors = mudi.PriorsConfig().updated(values)
    check_priors_inputs(priors, ctx.options())
    return priors


def start_with_class_images(ctx: AppContext, config, priors) -> None:
    """Hand the worker one job: generate the class set (counted image by image, Stop ends it with
    nothing written), then train with it (counted step by step, as a plain run)."""
    import mudi
    from mudi.subjects import SubjectSet

    worker = ctx.worker
    total = priors.n * len({s.cls for s in SubjectSet.load(priors.subjects)})

    def job(on_step):
        Path(config.out).mkdir(parents=True, exist_ok=True)  # the class set is staged inside the run folder
        mudi.make_class_set(priors, ctx.options(), on_kept=lambda cls, kept: worker.count(kept))
        worker.begin_phase(TRAINING, config.max_train_steps)
        # the run folder holds the class set just made: the run starts beside it
        return mudi.train(config, ctx.options(overwrite=True), on_step=on_step)

    worker.start(config.out, total, 0, job, phase=CLASS_IMAGES)


__all__ = ["CLASS_SET", "EXISTING", "GENERATE", "SOURCES", "check_class_set", "class_images_config",
           "class_set_choices", "class_set_path", "only_class_images", "prior_fields", "start_with_class_images"]

"""``import_subjects``: validate an existing subject set (metadata.jsonl format) and copy it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mudi.errors import MudiError
from mudi.io import claim_output_dir, staged_output
from mudi.prepare.config import PrepareConfig
from mudi.prepare.masking import PhotoResult
from mudi.prepare.photos import FROM_ALPHA, FROM_MASK_FILE
from mudi.prepare.report import PrepareReport, write_outputs
from mudi.settings import RunOptions
from mudi.subjects import SubjectSet


def import_subjects(source: str | Path, out: str | Path, options: RunOptions | None = None) -> PrepareReport:
    """Validate the subject set at ``source``, copy it to ``out`` and write its contact sheet.

    Photos are copied byte for byte when they are plain upright RGB JPEG/PNG files, masks are
    rewritten as 0/255 PNGs. Nothing is written if the set is invalid; ``options.overwrite``
    allows a non-empty ``out`` (files are replaced one by one).
    """
    options = options or RunOptions()
    # 1. check the folders
    source, out = Path(source), Path(out)
    claim_output_dir(out, overwrite=options.overwrite, what="subject-set")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise MudiError(f"{out}: --out must be a different folder from --from.")
    # 2. load and validate the set (every photo and mask is read)
    sset = SubjectSet.load(source)
    results = []
    for s in sset.subjects:
        for p, seg in zip(s.photos, sset.photos(s.key)):
            results.append(PhotoResult(
                s.key, s.phrase, p.image_path, Image.fromarray(seg.image), seg.caption,
                FROM_MASK_FILE if p.mask_path is not None else FROM_ALPHA, mask=seg.mask,
            ))
    # 3. write everything at once
    record = {
        "mode": "import",
        "source": str(source),
        "subjects": {s.key: {"phrase": s.phrase} for s in sset.subjects},
        "n_photos": len(results),
        "n_failed": 0,
    }
    config = PrepareConfig(source=str(source), out=str(out))
    with staged_output(out, overwrite=options.overwrite, what="subject-set") as stage:
        write_outputs(stage, sset, results, record, f"mudi prepare --from {source}", config.to_toml())
    return PrepareReport(out, SubjectSet.load(out, validate=False), results)


__all__ = ["import_subjects"]

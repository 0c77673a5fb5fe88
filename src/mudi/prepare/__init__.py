"""Prepare: raw reference photos (or an existing set) → a segmented subject set (METHOD.md §1).

- :func:`prepare` / :class:`PrepareConfig`: what `mudi prepare` does.
- :func:`import_subjects`: validate and copy an existing subject set.
- :func:`segment_photo`: detect-then-segment one photo (used for class images too).
- :func:`mask_candidates`: SAM's candidate masks for a photo and a box, for a user to choose from.

Heavy models (OWLv2, SAM) are loaded inside the functions, only when a photo needs them.
"""

from mudi.stage import make_callable
from mudi.prepare.config import DEFAULT_BOX_MARGIN, DEFAULT_THRESHOLD, PrepareConfig
from mudi.prepare.importer import import_subjects
from mudi.prepare.masking import PhotoResult, pick_single_box, run_preparation, segment_in_box, segment_photo
from mudi.prepare.photos import SubjectSpec, collect_inputs
from mudi.prepare.pipeline import build_subject_set, load_models, mask_candidates, prepare
from mudi.prepare.report import CONTACT_SHEET, FAILURES, REPORT, PrepareReport, failure_table, results_table

__all__ = [
    "CONTACT_SHEET",
    "DEFAULT_BOX_MARGIN",
    "DEFAULT_THRESHOLD",
    "FAILURES",
    "REPORT",
    "PhotoResult",
    "PrepareConfig",
    "PrepareReport",
    "SubjectSpec",
    "build_subject_set",
    "collect_inputs",
    "failure_table",
    "import_subjects",
    "load_models",
    "mask_candidates",
    "pick_single_box",
    "prepare",
    "results_table",
    "run_preparation",
    "segment_in_box",
    "segment_photo",
]

make_callable(__name__, prepare)  # mudi.prepare(...) runs prepare(...); the package stays importable

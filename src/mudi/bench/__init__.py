"""``mudi bench``: a prompt suite over subject sets for one method, evaluated into one table.

Entry points: :func:`bench` (configured by :class:`BenchConfig`), :func:`load_suite` (shipped
suites: ``dreambench_multi``, ``mudi_pairs``; or your JSON file), :func:`plan_import` /
:func:`import_images` (another tool's images with their prompts), :func:`bootstrap_ci`.

Modules: :mod:`~mudi.bench.config`, :mod:`~mudi.bench.suites` (the suite format and the
multi-subject prompt rule), :mod:`~mudi.bench.importer`, :mod:`~mudi.bench.runner`,
:mod:`~mudi.bench.table` (means, bootstrap intervals, CSV/JSON/HTML).
"""

from mudi.stage import make_callable
from mudi.bench.config import BenchConfig
from mudi.bench.importer import import_images, plan_import
from mudi.bench.runner import BenchResult, bench
from mudi.bench.suites import Suite, load_suite, multi_subject_prompt, shipped_suites
from mudi.bench.table import bootstrap_ci

__all__ = ["BenchConfig", "BenchResult", "Suite", "bench", "bootstrap_ci", "import_images", "load_suite",
           "multi_subject_prompt", "plan_import", "shipped_suites"]

make_callable(__name__, bench)  # mudi.bench(...) runs bench(...); the package stays importable

"""Workflows that chain stages: :func:`iterate` (iterative training: train → generate →
evaluate → keep → fine-tune, ``mudi train --rounds N``).

A workflow may use every stage; no stage imports a workflow (``tests/test_structure.py``).
"""

from mudi.workflows.rounds import RoundsResult, iterate

__all__ = ["RoundsResult", "iterate"]

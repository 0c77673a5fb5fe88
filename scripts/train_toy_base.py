#!/usr/bin/env python
"""Train the toy base model shipped in src/mudi/assets/toy_base (see mudi.toy.train).

Example (what produced the shipped weights is recorded in toy_training.json):
    python scripts/train_toy_base.py --out runs/toy_base --export src/mudi/assets/toy_base
"""

from mudi.toy.train import main

if __name__ == "__main__":
    raise SystemExit(main())

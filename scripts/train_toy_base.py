#!/usr/bin/env python
"""Train the toy base model shipped in src/mudi/assets/toy_base (see mudi.toy.train).

The shipped model was made in two stages; the two commands are in the docstring of
mudi/toy/train.py, and the last stage's exact arguments are in toy_training.json. Example:
    python scripts/train_toy_base.py --out runs/toy_base --world-version 1 --unet-steps 6400
"""

from mudi.toy.train import main

if __name__ == "__main__":
    raise SystemExit(main())

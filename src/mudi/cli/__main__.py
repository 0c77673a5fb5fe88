"""``python -m mudi.cli``: the same as the ``mudi`` command (used by ``accelerate launch -m mudi.cli``)."""

import sys

from mudi.cli import main

sys.exit(main())

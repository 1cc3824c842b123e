"""``python -m firstlayer``: the same command line as the ``firstlayer`` script.

It also serves ``torchrun --nproc-per-node N -m firstlayer train ...`` for data-parallel training.
"""

from __future__ import annotations

import sys

from firstlayer.cli import main

if __name__ == "__main__":
    sys.exit(main())

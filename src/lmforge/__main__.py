"""``python -m lmforge`` and ``torchrun -m lmforge``."""

import sys

from lmforge.cli import main

sys.exit(main())

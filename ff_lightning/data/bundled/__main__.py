"""``python -m ff_lightning.data.bundled [--cache DIR] [--force] ...``: build the bundled datasets."""

import sys

from . import main_build

sys.exit(main_build())

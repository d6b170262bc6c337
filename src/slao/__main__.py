"""``python -m slao`` (what ``torchrun -m slao`` starts in every process)."""

import sys

from slao.cli import main

sys.exit(main())

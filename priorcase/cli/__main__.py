"""``python -m priorcase.cli``."""

import sys

from priorcase.cli import main

sys.exit(main())

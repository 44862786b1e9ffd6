"""``python -m flexnas.cli``."""

import sys

from flexnas.cli import main

sys.exit(main())

"""``python -m mfm_framework`` is ``mfm``."""

import sys

from mfm_framework.cli import main

sys.exit(main())

"""``python -m quantlab env`` works without the console script."""

import sys

from quantlab.cli import main

sys.exit(main())

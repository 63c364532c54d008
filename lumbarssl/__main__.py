"""Allow ``python -m lumbarssl``."""

import sys

from lumbarssl.cli import main

sys.exit(main())

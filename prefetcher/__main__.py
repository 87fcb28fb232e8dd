"""``python -m prefetcher``."""

import sys

from prefetcher.cli import main

sys.exit(main())

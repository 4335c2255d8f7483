"""``python -m recsvc``: see recsvc.cli."""

import sys

from .cli import main

sys.exit(main())

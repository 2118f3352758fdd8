"""``python -m functionfuse``: the command line (docs/cli.md)."""

import sys

from .cli import main

sys.exit(main())

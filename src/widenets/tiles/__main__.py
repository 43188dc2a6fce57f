"""`python -m widenets.tiles ...`: the `widenets kernel` command (see cli.py)."""

import sys

from .cli import main

sys.exit(main())

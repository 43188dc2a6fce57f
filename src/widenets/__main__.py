"""`python -m widenets` runs the `widenets` command."""

import sys

from .cli import main

sys.exit(main())

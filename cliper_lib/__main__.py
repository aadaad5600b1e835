"""`python -m cliper_lib ...` (and `torchrun -m cliper_lib eval ...`): the `cliper` command line."""

import sys

from .suite.cli.commands import main

sys.exit(main())

"""`python -m cliper_lib ...` (and `torchrun -m cliper_lib eval ...`): the `cliper` command line."""

from .suite.cli.commands import run

run()

"""`python -m ofa2_edge.train ...` (what torchrun runs): the `ofa2-edge train` command alone."""

import sys

from ofa2_edge.cli.train import run_standalone

if __name__ == "__main__":
    sys.exit(run_standalone())

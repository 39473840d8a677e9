"""`python -m dfota.tools.bench`: the benchmark from the command line."""

import sys

from dfota.tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

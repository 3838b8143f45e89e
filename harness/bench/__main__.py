"""`python -m harness.bench`: see `harness.bench.single`."""

import sys

from harness.bench.single import main

if __name__ == "__main__":
    sys.exit(main())

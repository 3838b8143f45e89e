"""`python -m bench`: see `bench.single`."""

import sys

from bench.single import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m ccd`` = the ``ccd`` command."""

import sys

from ccd.cli import main

if __name__ == "__main__":
    sys.exit(main())

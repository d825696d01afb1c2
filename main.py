"""Inspector entry point: ``python main.py COMMAND ...`` runs the command line (see --help)."""

import sys

from inspector.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m inspector COMMAND ...``: the command line (``python main.py`` with no command opens the window)."""

import sys

from .cli import main

sys.exit(main())

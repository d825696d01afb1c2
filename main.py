"""Inspector entry point.

``python main.py`` opens the desktop window; ``python main.py COMMAND ...`` runs the command line
(see ``python main.py --help``), which never imports Qt.
"""

import sys

if __name__ == "__main__":
    if len(sys.argv) == 1:
        from inspector.ui.app import run

        sys.exit(run())
    from inspector.cli import main

    sys.exit(main())

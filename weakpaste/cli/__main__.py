"""``python -m weakpaste.cli`` runs the command line."""

import sys

from weakpaste.cli import main

sys.exit(main())

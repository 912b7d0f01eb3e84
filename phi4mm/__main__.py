"""`python -m phi4mm ...`, the same as the `phi4mm` command."""

import sys

from phi4mm.cli.main import main

sys.exit(main())

"""`python -m proxy` runs the idgate command."""

import sys

from proxy.cli import main

sys.exit(main())

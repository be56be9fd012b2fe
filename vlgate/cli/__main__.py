"""`python -m vlgate.cli`: the `vlgate` command (how tests and systemd units without the script run it)."""

import sys

from vlgate.cli import main

sys.exit(main())

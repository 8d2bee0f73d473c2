"""``python -m tideflow``: the command line."""

import sys

from tideflow.cli import main

sys.exit(main())

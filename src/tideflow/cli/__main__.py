"""``python -m tideflow.cli``."""

import sys

from tideflow.cli._main import main

sys.exit(main())

"""``python -m awp_landscape ...`` (and ``torchrun ... -m awp_landscape ...``) is ``awp ...``."""

import sys

from awp_landscape.cli import main

sys.exit(main())

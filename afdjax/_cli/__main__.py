"""``python -m afdjax._cli``: the afdjax command line."""

import sys

from ._main import main

sys.exit(main())

"""``python -m bnserve.cli``: the same as the ``bnserve`` command."""

import sys

from bnserve.cli.main import main

sys.exit(main())

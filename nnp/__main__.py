"""``python -m nnp`` is the ``nnp`` command."""

import sys

from nnp.cli import main

sys.exit(main())

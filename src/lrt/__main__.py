"""`python -m lrt ...` is the `lrt` command."""

import sys

from .cli import main

sys.exit(main())

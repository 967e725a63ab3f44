"""
C{python -m netd}: the same as the C{netd} command.
"""

import sys

from netd.cli import main

sys.exit(main())

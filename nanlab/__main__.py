"""``python -m nanlab`` is the ``nanlab`` command."""
import sys

from nanlab.cli import main

sys.exit(main())

"""A rebuild's helper process: ``python -m flowtrail.engine.replay_helper TASK-JSON``.

Kept apart from `flowtrail.engine.replay`, which the package imports, so that running
it as the main module does not load the same code twice.
"""

from __future__ import annotations

import sys

from flowtrail.engine.replay import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))

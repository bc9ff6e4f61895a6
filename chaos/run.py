"""``python chaos/run.py [--minutes M] [--rate R] [--fsync everysec|always] [--out FILE]``:
hookline's fault-injection run. See :mod:`chaos.harness`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

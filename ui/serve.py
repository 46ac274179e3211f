"""The app's server as scripts/app.sh starts it: `streamlit run app.py` (same options), with the
first page's imports and default backbone loading from the moment the process starts
(ui/preload.py), not from the first page request.

    python -m ui.serve [streamlit run options, e.g. --server.port 8502]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see app.py
    from ui import preload

    preload.start()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *(sys.argv[1:] if argv is None else argv)]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()

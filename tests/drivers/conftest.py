"""The driver matrix and the Prometheus check share the client tests'
harness: one throwaway cluster per pytest session (library preloaded,
statement logging on, bind values never logged; at the end its log is
searched for every token a Python driver saw). Run them with

    tests/client/run --suite tests/drivers [pytest args...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from harness import *  # noqa: E402,F401,F403

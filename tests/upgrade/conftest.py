"""The upgrade suite shares the client tests' harness (cluster helpers,
`sa`); it starts its own clusters, from the private copy of PostgreSQL that
tests/upgrade/run prepares (PG_CONFIG points at it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from harness import *  # noqa: E402,F401,F403

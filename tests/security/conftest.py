"""The standing security suite shares the client tests' harness: one
throwaway cluster per pytest session (library preloaded, statement logging
on, bind values never logged), and `own_cluster` for tests that need a
cluster configured or abused in a way of their own."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from harness import *  # noqa: E402,F401,F403

"""The fault suites (tests/faults) share the client tests' harness: the
throwaway clusters of tests/client/harness.py (`cluster`, `own_cluster`,
`connect`), its log checks (`crash_lines`) and `sa`'s token registry.

    tests/client/run --suite tests/faults [--fuzz-long] [pytest args...]

`--fuzz-long` turns test_fuzz.py's fixed 100,000 calls into a 10-minute
run, for a release (not in CI)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import *  # noqa: E402,F401,F403


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the SQL fuzzer for 10 minutes instead of 100,000 calls (pre-release)")

"""pytest picks its fixtures up from here; they live in harness.py so that
tests/security shares them (one throwaway cluster per pytest session)."""

from harness import *  # noqa: F401,F403
from harness import Cluster, lib_sh  # noqa: F401  (imported by test modules)

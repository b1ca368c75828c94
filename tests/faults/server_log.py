"""What the fault suites check in a server log when they are done: no
crashed backend, and no token, whole or as a body without its prefix."""

from __future__ import annotations

import re

# harness.crash_lines's pattern, anchored at line starts: unanchored it
# takes seconds a megabyte, and these suites write megabytes.
CRASH = re.compile(r"(?m)^.*(?:terminated by signal|was terminated by|PANIC:|all server processes terminated).*$")
TOKEN_PREFIX = re.compile(r"pgsa_", re.IGNORECASE)
RUN = re.compile(r"[A-Za-z0-9_-]{70,}")   # where a token's 70-character body could be
_TOKEN_TEXT = re.compile(r"pgsa_[A-Za-z0-9_-]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with anything token-like cut to its prefix, for a message
    that reports a leak without repeating it."""
    return _TOKEN_TEXT.sub(lambda m: m.group(0)[:8] + "<redacted>", text)


def findings(log: str, tokens: set) -> list[str]:
    """What is wrong with `log`, given every token the suite saw."""
    wrong = [f"crash: {line}" for line in CRASH.findall(log)[:5]]
    if m := TOKEN_PREFIX.search(log):
        wrong.append(f"{len(TOKEN_PREFIX.findall(log))} token prefixes in the server log, the first: "
                     f"{redact(log[max(0, m.start() - 80):m.start() + 80])!r}")
    bodies = {t[8:78] for t in tokens if t}
    leaked = {run[i:i + 70] for run in RUN.findall(log) for i in range(len(run) - 69)} & bodies
    if leaked:
        wrong.append(f"{len(leaked)} token bodies in the server log")
    return wrong

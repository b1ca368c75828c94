#!/usr/bin/env python3
"""The refresh load of bench/run's replica workload, and its fresh tokens.

  replica.py --primary DIR --target DIR --port P --families H --rate R
             --threads T --seconds S --ready FILE --out FILE

T threads rotate the families 1..H (their current refresh tokens read from
bench.tokens on the primary, each thread its own families, round-robin) at R
refreshes a second in all, on the primary, and hand every new access token in
memory to a validate on TARGET (the standby or the primary) straight after the
refresh returned: the application that refreshed on the primary and sends its
next request to a replica. Every status word those validates answer is
counted (`invalid` today where the standby has not replayed the refresh yet;
`not_replayed` once the extension says so).

The measured validate throughput is pgbench's, on other families: this driver
is only the refresh load (the same fixed rate whichever server the validators
use) and the source of fresh tokens. It runs until SIGTERM or S seconds, then
stores the current pairs back into bench.tokens (the sanity check and later
workloads present them) and writes one JSON line to FILE.
"""

import argparse
import json
import signal
import threading
import time
from collections import Counter

import psycopg

REFRESH = "SELECT status, access_token, refresh_token FROM session_refresh(%s)"
VALIDATE = "SELECT status FROM session_validate(%s)"


def connect(host, port):
    # Unix socket only; statements prepared on first use, as pgbench -M prepared.
    return psycopg.connect(host=host, port=port, user="postgres", dbname="bench",
                           autocommit=True, prepare_threshold=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--primary", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--families", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    with connect(a.primary, a.port) as c:
        rows = c.execute("SELECT id, access, refresh FROM bench.tokens WHERE id <= %s ORDER BY id",
                         (a.families,)).fetchall()
    pairs = {r[0]: [r[1], r[2]] for r in rows}
    ids = sorted(pairs)
    refreshed, validated, errors = Counter(), Counter(), []
    lock = threading.Lock()

    def run(mine):
        try:
            with connect(a.primary, a.port) as p, connect(a.target, a.port) as t:
                # Warm both statements up before the ready file says go.
                t.execute(VALIDATE, (pairs[mine[0]][0],)).fetchone()
                barrier.wait()
                every = a.threads / a.rate
                due = time.monotonic()
                rc, vc, k = Counter(), Counter(), 0
                while not stop.is_set():
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    elif now - due > 1.0:
                        due = now   # more than 1 s behind: no burst to catch up
                    due += every
                    fam = mine[k % len(mine)]
                    k += 1
                    st, access, refresh = p.execute(REFRESH, (pairs[fam][1],)).fetchone()
                    rc[st] += 1
                    if st != "ok":
                        continue
                    pairs[fam] = [access, refresh]
                    vc[t.execute(VALIDATE, (access,)).fetchone()[0] or "null"] += 1
                with lock:
                    refreshed.update(rc)
                    validated.update(vc)
        except Exception as e:  # reported, and the run fails
            with lock:
                errors.append(repr(e))
            stop.set()
            barrier.abort()

    barrier = threading.Barrier(a.threads + 1)
    threads = [threading.Thread(target=run, args=(ids[i::a.threads],)) for i in range(a.threads)]
    for th in threads:
        th.start()
    try:
        barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    open(a.ready, "w").close()
    stop.wait(a.seconds)   # bounded even if nobody sends SIGTERM
    stop.set()
    for th in threads:
        th.join()
    secs = time.monotonic() - t0
    with connect(a.primary, a.port) as c:
        c.execute("UPDATE bench.tokens t SET access = u.a, refresh = u.r "
                  "FROM unnest(%s::int[], %s::text[], %s::text[]) u(id, a, r) WHERE t.id = u.id",
                  (ids, [pairs[i][0] for i in ids], [pairs[i][1] for i in ids]))
    with open(a.out, "a") as f:
        f.write(json.dumps({"seconds": round(secs, 3), "cpu": round(time.process_time(), 3),
                            "refresh": dict(refreshed),
                            "validate": dict(validated), "errors": errors}) + "\n")
    if errors:
        raise SystemExit("replica.py: " + "; ".join(errors))


if __name__ == "__main__":
    main()

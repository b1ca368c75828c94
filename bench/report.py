#!/usr/bin/env python3
"""Helpers of bench/run: latency percentiles from pgbench logs, the report.

  report.py pct LOGDIR [FROM TO]    "count p50_ms p99_ms" of the transactions
                                    logged in LOGDIR/tx.* (optionally only
                                    those that ended between FROM and TO,
                                    Unix epoch seconds)
  report.py rate LOGDIR FROM TO     transactions per second in that window
  report.py fresh FILE              the replica driver's JSON lines (replica.py),
                                    summed: "refreshes=N seconds=S
                                    refresh_bad=K cpu_pct=P v.STATUS=N ..."
  report.py lag FILE                replay-lag samples ("epoch|ms", "null" when
                                    caught up, "none" without a standby):
                                    "samples=N p50=MS p99=MS caught_up=K none=M"
  report.py table RESULTS META      the Markdown report

pgbench's per-transaction log lines are
`client_id transaction_no time_us script_no epoch_s epoch_us`.
Percentiles are nearest-rank.
"""

import glob
import math
import sys


def latencies(logdir, lo=None, hi=None):
    out = []
    for path in glob.glob(f"{logdir}/tx[0-9]*"):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) < 6 or not p[2].isdigit():
                    continue  # skipped or failed transactions
                if lo is not None:
                    end = int(p[4]) + int(p[5]) / 1e6
                    if end < lo or end > hi:
                        continue
                out.append(int(p[2]))
    out.sort()
    return out


def pctl(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[k - 1]


def cmd_pct(args):
    lo = hi = None
    if len(args) >= 3:
        lo, hi = float(args[1]), float(args[2])
    v = latencies(args[0], lo, hi)
    print(f"{len(v)} {pctl(v, 0.50) / 1000:.3f} {pctl(v, 0.99) / 1000:.3f}")


def cmd_rate(args):
    lo, hi = float(args[1]), float(args[2])
    v = latencies(args[0], lo, hi)
    print(f"{len(v) / max(hi - lo, 1e-9):.1f}")


def cmd_fresh(args):
    import json
    secs, cpu, refresh, validate = 0.0, 0.0, {}, {}
    with open(args[0]) as f:
        for line in f:
            d = json.loads(line)
            secs += d["seconds"]
            cpu += d.get("cpu", 0)
            for src, dst in ((d["refresh"], refresh), (d["validate"], validate)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
    out = [f"refreshes={sum(refresh.values())}", f"seconds={secs:.1f}",
           f"refresh_bad={sum(v for k, v in refresh.items() if k != 'ok')}",
           f"cpu_pct={100 * cpu / max(secs, 1e-9):.0f}"]
    out += [f"v.{k}={v}" for k, v in sorted(validate.items())]
    print(" ".join(out))


def cmd_lag(args):
    v, caught, none = [], 0, 0
    with open(args[0]) as f:
        for line in f:
            _, _, x = line.strip().partition("|")
            if x == "null":
                caught += 1
                v.append(0.0)   # fully replayed: no lag
            elif x in ("none", ""):
                none += 1
            else:
                v.append(float(x))
    v.sort()
    print(f"samples={len(v)} p50={pctl(v, 0.50):.3f} p99={pctl(v, 0.99):.3f} "
          f"caught_up={caught} none={none}")


def kv(text):
    out = {}
    for part in (text or "").split():
        k, _, x = part.partition("=")
        out[k] = x
    return out


# --- the report -----------------------------------------------------------------


def load(results_path, meta_path):
    runs = {}
    with open(results_path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 3:
                continue
            name, tps, stats = p[0], float(p[1] or "nan"), p[2].split()
            runs[name] = {
                "tps": tps,
                "n": int(stats[0]),
                "p50": float(stats[1]),
                "p99": float(stats[2]),
                "bad": int(p[3]) if len(p) > 3 and p[3].isdigit() else 0,
            }
            io = p[4].split() if len(p) > 4 else []
            if len(io) == 2 and io[0] != "-":
                runs[name]["reads"] = float(io[0])
                runs[name]["read_us"] = float(io[1])
    meta = {}
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = v
    return runs, meta


def ratio(a, b):
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def fx(r):
    return "n/a" if r is None else f"{r:.2f}×"


def fnum(x, d=0):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{d}f}"


def fms(run, key):
    return "n/a" if run is None else f"{run[key]:.3f}"


def mb(b):
    return f"{int(b) / 1048576:,.1f} MB"


def verdict(r, goal, higher_is_better=True):
    if r is None:
        return "not measured"
    ok = r >= goal if higher_is_better else r <= goal
    return "**met**" if ok else "**missed**"


def replica_share(runs, meta):
    """The share of every validate on the standby (pgbench's and the fresh
    tokens') answered not_replayed, and the detail for the table."""
    fresh = kv(meta.get("replica_fresh_standby"))
    bad = kv(meta.get("replica_bad_standby"))
    n_fresh = sum(int(v) for k, v in fresh.items() if k.startswith("v."))
    run = runs.get("replica_standby")
    total = n_fresh + (run["n"] if run else 0)
    nr = int(fresh.get("v.not_replayed", 0)) + int(bad.get("not_replayed", 0))
    nr_fresh = int(fresh.get("v.not_replayed", 0))
    others = ", ".join(f"`{k[2:]}` {int(v):,}" for k, v in fresh.items()
                       if k.startswith("v.") and k not in ("v.ok", "v.not_replayed"))
    share = "n/a" if not total else f"{100 * nr / total:.2f} %"
    detail = (f"of {total:,}; of the {n_fresh:,} freshly refreshed: {nr_fresh:,}"
              + (f" (other non-ok: {others})" if others else ""))
    return share, detail


def per_session(fp, key):
    live = int(fp.get("live") or 0)
    return int(fp[key]) / live if live and fp.get(key, "").isdigit() else None


def footprint_rows(w, meta):
    fp = kv(meta.get("footprint"))
    if not fp:
        for what, goal in (("the sessions table with its indexes", 300),
                           ("every relation of the extension but `events`", 450)):
            w(f"| bytes per live session at rest, {what} | n/a | ≤ {goal} B | not run |")
        return
    b = lambda x: "n/a" if x is None else f"{x:,.0f} B"
    how = f"{int(fp['n']):,} sessions rotated once, grace over, `VACUUM FULL`"
    x = per_session(fp, "sessions")
    w(f"| bytes per live session at rest, the sessions table with its indexes ({how}) | {b(x)} "
      f"| ≤ 300 B | {verdict(x, 300, False)} |")
    x = per_session(fp, "all")
    w(f"| bytes per live session at rest, every relation of the extension but `events` "
      f"({fp.get('relations', '?')} tables with their indexes and TOAST) | {b(x)} | ≤ 450 B "
      f"| {verdict(x, 450, False)} |")
    w(f"| the floor at rest: its table with its primary key, per row | "
      f"{b(per_session(fp, 'floor'))} | | for comparison |")


def wal_per_refresh(d):
    tx = int(d.get("tx") or 0)
    return int(d["bytes"]) / tx if tx else None


def fpi_share(d):
    b = int(d.get("bytes") or 0)
    return f"{100 * int(d['fpi']) / b:.1f} %" if b and d.get("fpi", "").isdigit() else "n/a"


def wal_rows(w, meta):
    if meta.get("wal") != "ran":
        w(f"| WAL bytes per refresh in steady state, ext / floor | n/a | ≤ 2× | "
          f"{meta.get('wal', 'not run')} |")
        return
    e, f = kv(meta.get("wal_ext")), kv(meta.get("wal_floor"))
    be, bf = wal_per_refresh(e), wal_per_refresh(f)
    r = ratio(be, bf)
    w(f"| WAL bytes per refresh in steady state (no checkpoint in the window), ext / floor "
      f"| {fx(r)} ({fnum(be)} / {fnum(bf)} B) | ≤ 2× | {verdict(r, 2.0, False)}; "
      f"full-page images: ext {fpi_share(e)}, floor {fpi_share(f)} of the bytes |")


def footprint_wal_section(w, meta):
    fp = kv(meta.get("footprint"))
    if not fp and meta.get("wal") != "ran":
        return
    w("## Footprint and WAL")
    w("")
    if fp:
        p = lambda k: f"{per_session(fp, k):,.0f}" if per_session(fp, k) is not None else "n/a"
        idx = (int(fp["sessions"]) - int(fp["sessions_heap"])) / max(int(fp["live"]), 1)
        rest = (int(fp["all"]) - int(fp["sessions"]) - int(fp["blacklist"])) / max(int(fp["live"]), 1)
        w(f"At rest (`bench/footprint.sql`, a fresh database, {meta.get('footprint_seconds', '?')} s): "
          f"{int(fp['n']):,} sessions issued with 20-byte user ids and `{{}}` data, "
          f"{int(fp['rotated']):,} rotated once with `refresh_grace = 1s`, the grace waited out, a "
          f"purge pass, `VACUUM FULL` of the extension's tables; {int(fp['live']):,} live. Bytes per "
          f"live session: sessions {p('sessions')} (heap {p('sessions_heap')}, indexes {idx:,.0f}), "
          f"blacklist {p('blacklist')}, the other {int(fp['relations']) - 2} relations {rest:,.0f}; "
          f"together {p('all')}. Not counted: `events` {p('events')} (one `issued` row per session). "
          f"The floor: {p('floor')} per row (heap {p('floor_heap')}).")
        w("")
    if meta.get("wal") == "ran":
        w(f"WAL per refresh ({meta.get('wal_setup', '?')}; the window is the WAL insert position "
          "around the measured pgbench run, divided by its transactions; full-page images and "
          "records from `pg_walinspect` over the same window):")
        w("")
        w("| system | refreshes in the window | tps | WAL bytes / refresh | of which full-page images "
          "| without them, bytes / refresh | WAL records / refresh | commit records "
          "| checkpoints | non-ok |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sys in ("ext", "floor"):
            d = kv(meta.get(f"wal_{sys}"))
            tx = int(d.get("tx") or 0)
            has = d.get("fpi", "").isdigit() and tx
            cells = [sys, f"{tx:,}", fnum(float(d.get("tps") or "nan")), fnum(wal_per_refresh(d)),
                     fpi_share(d)]
            if has:
                cells += [fnum((int(d["bytes"]) - int(d["fpi"])) / tx),
                          fnum(int(d["records"]) / tx, 1), f"{int(d['commits']):,}",
                          d.get("checkpoints", "n/a")]
            else:
                cells += ["n/a"] * 4
            cells.append(d.get("bad", "?"))
            w("| " + " | ".join(cells) + " |")
        w("")


def cmd_table(args):
    runs, meta = load(args[0], args[1])
    size = int(meta.get("size", "0"))
    out = []
    w = out.append
    w("# pg_session_auth benchmark")
    w("")
    mode = meta.get("mode", "?")
    cmd = meta.get("command", "bench/run")
    w(f"`{cmd}` ({mode} run), {meta.get('date', '?')}; PostgreSQL {meta.get('server', '?')}, "
      f"pg_session_auth {meta.get('extversion', '?')} ({meta.get('build', '?')}); "
      f"{meta.get('machine', '?')}; wall time {int(meta.get('wall', '0')) // 60} min "
      f"{int(meta.get('wall', '0')) % 60} s.")
    w("")
    w(f"Server: {meta.get('settings', '?').strip()}.  ")
    w(f"pgbench {meta.get('pgbench', '?')}. Every transaction is one statement that reads a "
      "pre-issued token from a lookup table by a uniformly drawn id (the same for every system) "
      "and makes the call with it; refresh clients own disjoint families and store the rotated "
      "pair back in that statement. Latencies are per pgbench transaction, nearest-rank "
      "percentiles of the per-transaction logs.")
    w("")
    w("- **ext**: the extension (`session_validate`, `session_refresh`, `session_issue`).")
    w("- **floor**: one primary-key probe of a SHA-256 digest in an indexed table of the same "
      "size (refresh: a one-row UPDATE by digest; issue: a one-row INSERT), same client work.")
    w("- **peer**: `bench/peer.sql`, hand-written PL/pgSQL + pgcrypto: sessions table, "
      "token-lineage table with an indexed digest per token, rotation, reuse detection, events.")
    w("")

    # Targets.
    g = lambda name: runs.get(name)
    tps = lambda name: g(name)["tps"] if g(name) else None
    p50 = lambda name: g(name)["p50"] if g(name) else None
    scale_sizes = sorted({int(k.split("_")[1]) for k in runs if k.startswith("scale_")})
    lo_n = scale_sizes[0] if scale_sizes else None
    hi_n = scale_sizes[-1] if scale_sizes else None
    w("## Targets")
    w("")
    w("| target | measured | goal | |")
    w("|---|---|---|---|")
    r = ratio(tps("validate_ext"), tps("validate_floor"))
    w(f"| validate throughput, ext / floor | {fx(r)} | ≥ 0.9× | {verdict(r, 0.9)} |")
    r = ratio(tps("validate_ext"), tps("validate_peer"))
    w(f"| validate throughput, ext / peer | {fx(r)} | ≥ 1.5× | {verdict(r, 1.5)} |")
    r = ratio(tps("refresh_ext"), tps("refresh_peer"))
    w(f"| refresh throughput, ext / peer | {fx(r)} | ≥ 2× | {verdict(r, 2.0)} |")
    for wl in ("validate", "refresh"):
        if lo_n and hi_n and lo_n != hi_n:
            r = ratio(p50(f"scale_{hi_n}_ext_{wl}"), p50(f"scale_{lo_n}_ext_{wl}"))
            w(f"| {wl} p50 latency, {hi_n:,} / {lo_n:,} sessions | {fx(r)} | ≤ 1.3× | "
              f"{verdict(r, 1.3, False)} |")
        else:
            w(f"| {wl} p50 latency at scale | n/a | ≤ 1.3× | not measured |")
    if meta.get("bloat") == "ran":
        first = meta.get("bloat_size_first")
        end = meta.get("bloat_size_end")
        r = ratio(float(end), float(first)) if first else None
        rot = int(meta["bloat_rotations"])
        note = "" if rot >= int(meta["bloat_target_rotations"]) else \
            f" (time-capped at {int(rot):,} of {int(meta['bloat_target_rotations']):,} rotations)"
        w(f"| total size after {rot:,} rotations / after {int(meta.get('bloat_first_at') or 0):,}"
          f"{note} | {fx(r)} | ≤ 1.5× | {verdict(r, 1.5, False)} |")
    else:
        w(f"| total size after 2M rotations / after 100k | n/a | ≤ 1.5× | "
          f"{meta.get('bloat', 'not run')} |")
    if meta.get("replica") == "ran":
        r = ratio(tps("replica_standby"), tps("replica_primary"))
        w(f"| validate throughput on a hot standby / on the primary, "
          f"{int(meta['replica_rate']):,} refreshes/s on the primary | {fx(r)} | ≥ 0.9× | "
          f"{verdict(r, 0.9)} |")
        lag = kv(meta.get("replica_lag_standby"))
        w(f"| replay lag p50 / p99 meanwhile (`pg_stat_replication.replay_lag`, every 100 ms) | "
          f"{lag.get('p50', 'n/a')} / {lag.get('p99', 'n/a')} ms | | reported |")
        share, detail = replica_share(runs, meta)
        w(f"| standby validates answered `not_replayed` | {share} | | {detail} |")
    else:
        w(f"| validate throughput on a hot standby / on the primary | n/a | ≥ 0.9× | "
          f"{meta.get('replica', 'not run')} |")
    if meta.get("purge") == "ran":
        r = ratio(g("purge_during")["p99"], g("purge_base")["p99"]) \
            if g("purge_during") and g("purge_base") else None
        w(f"| validate p99 during purge / without | {fx(r)} | ≤ 2× | {verdict(r, 2.0, False)} |")
    else:
        w(f"| validate p99 during purge / without | n/a | ≤ 2× | {meta.get('purge', 'not run')} |")
    footprint_rows(w, meta)
    wal_rows(w, meta)
    if meta.get("commitdelay") == "ran":
        on, off = g("commitdelay_on"), g("commitdelay_off")
        r = ratio(tps("commitdelay_on"), tps("commitdelay_off"))
        w(f"| ext refresh throughput with `commit_delay = 10` (µs), `commit_siblings = 2` / "
          f"without | {fx(r)} ({fnum(tps('commitdelay_on'))} / {fnum(tps('commitdelay_off'))} tps) "
          f"| | reported; p50 {fms(on, 'p50')} / {fms(off, 'p50')} ms |")
    else:
        w("| ext refresh throughput with `commit_delay = 10`, `commit_siblings = 2` / without "
          "| n/a | | not run |")
    w("")

    # Main workloads.
    if any(k.endswith(("_ext", "_floor", "_peer")) and not k.startswith(("scale_", "purge_"))
           for k in runs):
        w(f"## Workloads, {size:,} sessions")
        w("")
        w("| workload | ext tps | floor tps | peer tps | ext / floor | ext / peer "
          "| ext p50 / p99 ms | floor p50 / p99 ms | peer p50 / p99 ms |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        # (workload, label, the ext run): "heard" is ext's issue with a
        # listener connected, so its logins queue their NOTIFY.
        rows = (("validate", "validate", "validate_ext"), ("refresh", "refresh", "refresh_ext"),
                ("issue", "issue, nobody listening", "issue_ext"),
                ("issue", "issue, a listener connected", "issue_heard"),
                ("mixed", "mixed 90/9/1", "mixed_ext"))
        for wl, label, ext in rows:
            e, f_, p = g(ext), g(f"{wl}_floor"), g(f"{wl}_peer")
            if not (e or (ext != "issue_heard" and (f_ or p))):
                continue
            lat = lambda x: "n/a" if x is None else f"{x['p50']:.3f} / {x['p99']:.3f}"
            w(f"| {label} | {fnum(tps(ext))} | {fnum(tps(f'{wl}_floor'))} | "
              f"{fnum(tps(f'{wl}_peer'))} | {fx(ratio(tps(ext), tps(f'{wl}_floor')))} | "
              f"{fx(ratio(tps(ext), tps(f'{wl}_peer')))} | {lat(e)} | {lat(f_)} | {lat(p)} |")
        w("")
        w("The peer announces every login (`pg_notify`), listened to or not. The extension "
          "queues a login's NOTIFY only while a backend listens on `session_auth` "
          "(docs/design.md, \"Announcing events\"); in the mixed workload nobody listens.")
        w("")

    # Scale.
    if scale_sizes:
        w("## Scale")
        w("")
        w(f"p50 latency in ms, × relative to {lo_n:,} sessions; in brackets throughput (tps) "
          "and blocks read from outside shared_buffers per transaction (with the time spent "
          "reading them, µs per transaction). The systems alternate in slices at each size.")
        w("")
        w("| sessions | ext validate | floor validate | ext refresh | floor refresh |")
        w("|---:|---:|---:|---:|---:|")
        for n in scale_sizes:
            cells = []
            for k in ("ext_validate", "floor_validate", "ext_refresh", "floor_refresh"):
                x = g(f"scale_{n}_{k}")
                base = g(f"scale_{lo_n}_{k}")
                if x is None:
                    cells.append("n/a")
                    continue
                rel = "" if n == lo_n else f", {fx(ratio(x['p50'], base['p50'] if base else None))}"
                io = f", {x['reads']:.2f} reads {x['read_us']:.0f} µs" if "reads" in x else ""
                cells.append(f"{x['p50']:.3f}{rel} ({fnum(x['tps'])}{io})")
            w(f"| {n:,} | " + " | ".join(cells) + " |")
        w("")
        for k, v in meta.items():
            if k.startswith("load_ext_"):
                w(f"- loaded {v} (up to {int(k[9:]):,})")
        if "load_peer" in meta:
            w(f"- peer: loaded {meta['load_peer']}")
        w("")

    # Bloat and purge.
    w("## Bloat and purge")
    w("")
    if meta.get("bloat") == "ran":
        w(f"Bloat: {int(meta['bloat_rotations']):,} rotations in {meta['bloat_seconds']} s "
          f"over {meta.get('bloat_families', 'the')} families with access_ttl = idle_timeout = "
          f"{meta.get('bloat_ttl', '?')}, purge_interval = 5s (purge: {meta['bloat_driver']}). Total size of the "
          f"extension's tables: {mb(meta['bloat_size_start'])} at start, "
          f"{mb(meta['bloat_size_first']) if meta.get('bloat_size_first') else 'n/a'} after "
          f"{int(meta.get('bloat_first_at') or 0):,} rotations, {mb(meta['bloat_size_end'])} "
          f"at the end (peak {mb(meta['bloat_size_peak'])}; sessions / blacklist / events bytes: "
          f"{meta['bloat_size_detail']}). Size by rotations done: {meta.get('bloat_trajectory', 'n/a')}. "
          f"Session row updates that were HOT: {meta.get('bloat_hot', 'n/a')}; "
          f"VACUUMs of the extension's tables (worker / autovacuum): {meta.get('bloat_vacuums', 'n/a')}. "
          f"Non-ok answers: {meta['bloat_bad']}.")
    else:
        w(f"Bloat: {meta.get('bloat', 'not run')}.")
    w("")
    if meta.get("purge") == "ran":
        b, d = g("purge_base"), g("purge_during")
        w(f"Purge: {int(meta['purge_rows']):,} expired sessions, removed by the "
          f"{meta['purge_driver']}; "
          + ("all gone" if meta.get("purge_done") == "yes" else f"{int(meta['purge_left']):,} left")
          + f" after {meta['purge_seconds']} s. Validate without purge: {fnum(b['tps'])} tps, "
          f"p50 {b['p50']:.3f} ms, p99 {b['p99']:.3f} ms; during the purge window: "
          f"{fnum(d['tps'])} tps, p50 {d['p50']:.3f} ms, p99 {d['p99']:.3f} ms "
          f"({d['n']:,} transactions).")
    else:
        w(f"Purge: {meta.get('purge', 'not run')}.")
    w("")

    footprint_wal_section(w, meta)

    # Replica.
    if meta.get("replica") == "ran":
        w("## Replica")
        w("")
        s_, p_ = g("replica_standby"), g("replica_primary")
        fs, fp = kv(meta.get("replica_fresh_standby")), kv(meta.get("replica_fresh_primary"))
        rate = lambda f: fnum(int(f.get("refreshes", 0)) / max(float(f.get("seconds", 0)), 1e-9))
        statuses = lambda f: ", ".join(f"{k[2:]} {int(v):,}" for k, v in f.items()
                                       if k.startswith("v.")) or "none"
        lag_p = kv(meta.get("replica_lag_primary"))
        lag_s = kv(meta.get("replica_lag_standby"))
        w(f"A streaming hot standby of this cluster ({meta.get('replica_setup', '?')}). "
          f"{meta.get('replica_slices', '?')} slices alternating: pgbench validates (the same "
          f"clients and script, families {int(meta['replica_hot']) + 1:,}..{size:,}) on the standby, "
          f"then on the primary; in both, `bench/replica.py` refreshes families 1.."
          f"{int(meta['replica_hot']):,} on the primary at {int(meta['replica_rate']):,}/s and "
          "validates each new access token at once on the server the validators use.")
        w("")
        w("| validators on | validate tps | p50 / p99 ms | refreshes/s achieved | driver CPU "
          "| fresh tokens validated | replay lag p50 / p99 ms |")
        w("|---|---:|---:|---:|---:|---|---:|")
        for label, x, f, lag in (("standby", s_, fs, lag_s), ("primary", p_, fp, lag_p)):
            w(f"| {label} | {fnum(x['tps'] if x else None)} | {fms(x, 'p50')} / {fms(x, 'p99')} | "
              f"{rate(f)} | {f.get('cpu_pct', '?')} % of a core | {statuses(f)} | "
              f"{lag.get('p50', 'n/a')} / {lag.get('p99', 'n/a')} |")
        w("")
        w(f"Lag samples in the standby slices: {lag_s.get('samples', '?')}, "
          f"{lag_s.get('caught_up', '?')} of them with the standby fully caught up (0 ms). "
          f"pgbench's non-ok answers: standby {meta.get('replica_bad_standby') or 'none'}, "
          f"primary {meta.get('replica_bad_primary') or 'none'}. The driver's pairs, stored back "
          f"into `bench.tokens` at the end: {meta.get('replica_stored', '?')}.")
        w("")

    # Sanity.
    w("## Sanity")
    w("")
    bad = {k: v["bad"] for k, v in runs.items() if v["bad"]}
    w("- answers other than `ok` during the runs: "
      + (", ".join(f"{k} {v}" for k, v in bad.items()) if bad else "none"))
    if "sanity_ext" in meta:
        w(f"- after the runs, extension: {meta['sanity_ext']}; peer: {meta['sanity_peer']}")
    w("")
    print("\n".join(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"pct": cmd_pct, "rate": cmd_rate, "fresh": cmd_fresh, "lag": cmd_lag,
     "table": cmd_table}[cmd](args)


if __name__ == "__main__":
    main()

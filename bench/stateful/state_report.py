#!/usr/bin/env python3
"""Report the daemon's rule state after a run (called by scripts/bench-replay-stateful).

    python3 bench/stateful/state_report.py DB [--parts FILE.csv ...] [--rule harm-cluster]
                                          [--within-days 7] [--known a,b,c] [--label TEXT]

Reads `DB` (the daemon's earlywarn.db; read-only, safe while the daemon runs) and prints
one line of JSON:

  * rule_state: rows and bytes (SUM(LENGTH(data))) per kind, the query of the brief:
        SELECT kind, COUNT(*), SUM(LENGTH(data)) FROM rule_state GROUP BY kind
  * db_bytes, wal_bytes: the database file and its write-ahead log;
  * tables: bytes per table and index (SQLite's dbstat), so what grows with history
    (seen_records, files, alerts, outbox) is told apart from rule state;
  * windows: for the threshold rule, the entries held per group (district).

With --parts (the CSV files dropped so far, in order) it also computes what a 7-day window
must hold if it is bounded by the window and not by history: for each district, the rows
matching the rule (linked_harm other than "none") whose tested_at is within --within-days
of that district's latest matching row. The window is cleared once, when the first alert of
a district is raised (the end of the first file); after that the 7-day cooldown keeps it
from being cleared, so the expected count is exact from the second file on.
It also counts the distinct substances_major values not in --known (what first_seen keeps).
"""

import argparse
import csv
import datetime as dt
import json
import os
import sqlite3
import sys
import unicodedata


def normalise(s):
    # As earlywarn's normalise_term: alphanumerics only, lower case.
    return "".join(c.lower() for c in s if c.isalnum())


def parse_time(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def expected(parts, within_days, known):
    latest = {}
    times = {}
    substances = set()
    for path in parts:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for s in row["substances_major"].split(";"):
                    n = normalise(s)
                    if n and n not in known:
                        substances.add(n)
                if row["linked_harm"].strip().lower() == "none":
                    continue
                d = row["district"]
                t = int(parse_time(row["tested_at"]).timestamp() * 1000)
                times.setdefault(d, []).append(t)
                latest[d] = max(latest.get(d, t), t)
    span = int(within_days * 86400 * 1000)
    windows = {d: sum(1 for t in ts if t >= latest[d] - span) for d, ts in times.items()}
    return windows, len(substances)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db")
    ap.add_argument("--parts", nargs="*", default=[])
    ap.add_argument("--rule", default="harm-cluster")
    ap.add_argument("--within-days", type=float, default=7.0)
    ap.add_argument("--known", default="")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    con = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    kinds = {}
    for kind, rows, size in con.execute(
            "SELECT kind, COUNT(*), SUM(LENGTH(data)) FROM rule_state GROUP BY kind ORDER BY kind"):
        kinds[kind] = {"rows": rows, "bytes": size}
    tables = {}
    try:
        for name, size in con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
            tables[name] = size
    except sqlite3.OperationalError:
        pass  # SQLite built without dbstat
    windows = {}
    for group, data in con.execute(
            "SELECT group_key, data FROM rule_state WHERE kind = 'window' AND rule_id = ?", (args.rule,)):
        w = json.loads(data)
        windows[group] = {"entries": len(w.get("entries", [])), "events": len(w.get("events", [])),
                          "bytes": len(data)}
    counts = dict(con.execute("SELECT 'files', COUNT(*) FROM files UNION ALL "
                              "SELECT 'seen_records', COUNT(*) FROM seen_records UNION ALL "
                              "SELECT 'alerts', COUNT(*) FROM alerts UNION ALL "
                              "SELECT 'outbox', COUNT(*) FROM outbox").fetchall())
    con.close()
    wal = args.db + "-wal"
    out = {
        "label": args.label,
        "rule_state": kinds,
        "rule_state_rows": sum(k["rows"] for k in kinds.values()),
        "rule_state_bytes": sum(k["bytes"] for k in kinds.values()),
        "db_bytes": os.path.getsize(args.db),
        "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
        "tables": tables,
        "counts": counts,
        "windows": windows,
    }
    if args.parts:
        known = {normalise(k) for k in args.known.split(",") if k}
        exp, n_substances = expected(args.parts, args.within_days, known)
        out["expected_windows"] = exp
        out["expected_seen_values"] = n_substances
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

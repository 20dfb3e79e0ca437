#!/usr/bin/env python3
"""Split a feed CSV into files and drop them into a running daemon's feed folder.

    python3 bench/drop/drop_files.py split CSV OUTDIR --rows-per-file N
    python3 bench/drop/drop_files.py drop STAGED FEED_DIR [--first I] [--count N] [--timeout S]

`split` writes OUTDIR/part-00001.csv, part-00002.csv, ... each with the header and N rows
(the last may hold fewer), in the order of the input, so time order is kept. It reads
with the csv module, so quoted fields holding line breaks stay whole. Standard library only.

`drop` moves staged files number I .. I+N-1 (part-0000I.csv ...) into FEED_DIR the way a
producer should: each is renamed (atomic, same file system) as fast as the loop goes.
Then it waits until every one of them is in FEED_DIR/processed/ or FEED_DIR/rejected/,
and prints one line of JSON:

    {"files": N, "rows": R, "drop_s": ..., "done_s": ..., "finished": true, "processed": P,
     "rejected": J, "with_rejected_rows": K, "missing": M, "files_per_s": ..., "rows_per_s": ...}

drop_s is the time the renames took; done_s the time from the first rename until the last
file had left the feed folder for processed/ (or rejected/). The rates are over done_s.
rejected counts whole files moved to rejected/, with_rejected_rows files whose bad rows were
set aside there (rejected/NAME.rows.csv) while the rest went to processed/.
Exit status: 0 if all N files reached processed/ with no row rejected, 1 otherwise.
"""

import argparse
import csv
import json
import os
import sys
import time


def split(args):
    os.makedirs(args.outdir, exist_ok=True)
    n_files = 0
    with open(args.csv, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        out = writer = None
        rows_in_file = 0
        for row in reader:
            if writer is None or rows_in_file == args.rows_per_file:
                if out:
                    out.close()
                n_files += 1
                out = open(os.path.join(args.outdir, f"part-{n_files:05d}.csv"), "w", newline="", encoding="utf-8")
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(header)
                rows_in_file = 0
            writer.writerow(row)
            rows_in_file += 1
        if out:
            out.close()
    print(f"{n_files} files of up to {args.rows_per_file} rows in {args.outdir}", file=sys.stderr)
    return 0


def count_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def drop(args):
    # By the number in the name (part-00042.csv is 42), so files dropped earlier do not shift it.
    def number(name):
        digits = "".join(c for c in name if c.isdigit())
        return int(digits) if digits else 0
    last = args.first + args.count - 1 if args.count else float("inf")
    chosen = sorted(n for n in os.listdir(args.staged)
                    if n.endswith(".csv") and args.first <= number(n) <= last)
    if not chosen:
        print("drop: no staged files chosen", file=sys.stderr)
        return 2
    rows = sum(count_rows(os.path.join(args.staged, n)) for n in chosen) if args.count_rows else None
    processed_dir = os.path.join(args.feed_dir, "processed")
    rejected_dir = os.path.join(args.feed_dir, "rejected")
    wanted = set(chosen)

    t0 = time.time()
    for name in chosen:
        os.rename(os.path.join(args.staged, name), os.path.join(args.feed_dir, name))
    t_dropped = time.time()

    # Done when none of the chosen files is left in the feed folder and each is in processed/
    # or rejected/ (the daemon moves a file only after its transaction committed).
    deadline = t0 + args.timeout
    done_at = None
    while time.time() < deadline:
        left = wanted.intersection(os.listdir(args.feed_dir))
        if not left:
            done_at = time.time()
            break
        time.sleep(args.poll)
    processed = len(wanted.intersection(os.listdir(processed_dir))) if os.path.isdir(processed_dir) else 0
    rejected_names = os.listdir(rejected_dir) if os.path.isdir(rejected_dir) else []
    rejected = len(wanted.intersection(rejected_names))
    with_rejected_rows = len({n + ".rows.csv" for n in wanted}.intersection(rejected_names))
    missing = len(chosen) - processed - rejected
    done_s = (done_at or time.time()) - t0
    result = {
        "files": len(chosen),
        "rows": rows,
        "drop_s": round(t_dropped - t0, 3),
        "done_s": round(done_s, 3),
        "finished": done_at is not None,
        "processed": processed,
        "rejected": rejected,
        "with_rejected_rows": with_rejected_rows,
        "missing": missing,
        "files_per_s": round(len(chosen) / done_s, 1) if done_s > 0 else None,
        "rows_per_s": round(rows / done_s) if rows is not None and done_s > 0 else None,
    }
    print(json.dumps(result))
    return 0 if processed == len(chosen) and with_rejected_rows == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("csv")
    s.add_argument("outdir")
    s.add_argument("--rows-per-file", type=int, required=True)
    d = sub.add_parser("drop")
    d.add_argument("staged")
    d.add_argument("feed_dir")
    d.add_argument("--first", type=int, default=1, help="first staged file to drop (from 1)")
    d.add_argument("--count", type=int, default=0, help="how many (0: all from --first)")
    d.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for processing")
    d.add_argument("--poll", type=float, default=0.05, help="seconds between looks at the folder")
    d.add_argument("--count-rows", action="store_true", help="count the rows of the dropped files")
    args = ap.parse_args()
    return split(args) if args.cmd == "split" else drop(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Drive the latency benchmark (called by scripts/bench-latency).

    python3 bench/latency_drive.py --feed-dir DIR --maildir DIR --files N [--out latencies.tsv]

For each of N files: write `.fI.tmp` holding a one-row drug_testing CSV with a
unique sample_id, rename it to `fI.csv`, note time.time() right after the
rename, then wait for the SMTP test server to accept the email for that row
(a new DIR/NNNNNN.json whose message carries the sample_id). The latency is
the server's `received_at` minus the rename time. Files are spaced 100-200 ms
apart (after the previous email arrived), so each measures an idle daemon
reacting to one drop, as in production.

Also reports where the time went, from the server's attempts.log (one line per
MAIL FROM): rename -> MAIL FROM (intake, commit, outbox wake-up, connect,
EHLO) and MAIL FROM -> accepted (envelope and DATA).

With --per-file N (the fan-out measurement: a rule that notifies N partners),
each file's latency is until the last of its N emails was accepted; the first
is reported too.

Exit status: 0 if every email arrived, 1 if any was missing after --timeout s.
"""

import argparse
import email
import email.policy
import json
import os
import re
import statistics
import sys
import time

HEADER = ("sample_id,received_at,tested_at,lab,source,district,postcode_district,purchased_as,form,"
          "colour,marking,substances_major,substances_minor,amount_mg_per_unit,linked_harm,notes\n")
DISTRICTS = ["Bolton", "Bury", "Manchester", "Oldham", "Rochdale", "Salford", "Stockport",
             "Tameside", "Trafford", "Wigan"]
SEQ = re.compile(r"^(\d{6})\.json$")


def row(sample_id, i):
    now = time.gmtime()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", now)
    district = DISTRICTS[i % len(DISTRICTS)]
    return (f"{sample_id},{stamp},{stamp},MANDRAKE,drug_service,{district},,heroin,powder,brown,,"
            f"heroin;protonitazene,caffeine,,none,Benchmark sample {i}.\n")


def mail_files(maildir):
    return sorted(n for n in os.listdir(maildir) if SEQ.match(n))


def message_mentions(record, sample_id):
    data = record.get("data", "")
    if sample_id in data:
        return True
    # The id may sit in a base64 or quoted-printable part: decode and look again.
    msg = email.message_from_string(data, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            try:
                if sample_id in part.get_content():
                    return True
            except (LookupError, ValueError):
                pass
    return sample_id in str(msg.get("Subject", ""))


def attempts(maildir):
    try:
        with open(os.path.join(maildir, "attempts.log"), encoding="utf-8") as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def pct(sorted_values, p):
    """Nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--feed-dir", required=True)
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each email")
    ap.add_argument("--target-ms", type=float, default=300.0, help="target for the median")
    ap.add_argument("--out", help="write one line per file: i, sample_id, latency_ms, to_mail_from_ms")
    ap.add_argument("--run-id", default=str(os.getpid()))
    ap.add_argument("--per-file", type=int, default=1, help="emails each file must give (partners notified)")
    ap.add_argument("--label", default="latency benchmark")
    ap.add_argument("--prefix", default="f", help="file names: PREFIX1.csv, ...")
    args = ap.parse_args()

    os.makedirs(args.maildir, exist_ok=True)
    seen = set(mail_files(args.maildir))
    lat, to_mail_from, mail_to_accept, first_lat = [], [], [], []
    missing, unmatched = 0, 0
    lines = []
    for i in range(1, args.files + 1):
        sample_id = f"BENCH-{args.run_id}-{i:05d}"
        tmp = os.path.join(args.feed_dir, f".{args.prefix}{i}.tmp")
        final = os.path.join(args.feed_dir, f"{args.prefix}{i}.csv")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(HEADER)
            f.write(row(sample_id, i))
        n_attempts = len(attempts(args.maildir))
        os.rename(tmp, final)
        t0 = time.time()

        records = []
        deadline = t0 + args.timeout
        while time.time() < deadline:
            new = [n for n in mail_files(args.maildir) if n not in seen]
            if new:
                for name in new:
                    seen.add(name)
                    with open(os.path.join(args.maildir, name), encoding="utf-8") as f:
                        r = json.load(f)
                    if message_mentions(r, sample_id):
                        records.append(r)
                    else:
                        unmatched += 1
                if len(records) >= args.per_file:
                    break
            time.sleep(0.001)
        if len(records) < args.per_file:
            missing += args.per_file - len(records)
            print(f"  file {i}: {len(records)} of {args.per_file} emails for {sample_id} within {args.timeout:.0f} s",
                  file=sys.stderr)
            lines.append(f"{i}\t{sample_id}\tNA\tNA")
        else:
            ms = (max(r["received_at"] for r in records) - t0) * 1000.0
            first_lat.append((min(r["received_at"] for r in records) - t0) * 1000.0)
            lat.append(ms)
            mf = attempts(args.maildir)[n_attempts:]
            mf_ms = (mf[0] - t0) * 1000.0 if mf else float("nan")
            if mf:
                to_mail_from.append(mf_ms)
                mail_to_accept.append(ms - mf_ms)
            lines.append(f"{i}\t{sample_id}\t{ms:.1f}\t{mf_ms:.1f}")
        if i % 10 == 0:
            print(f"  {i}/{args.files} files", file=sys.stderr)
        # 100-200 ms between drops, the same sequence on every run.
        time.sleep(0.1 + ((i * 37) % 101) / 1000.0)

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("file\tsample_id\tlatency_ms\trename_to_mail_from_ms\n")
            f.write("\n".join(lines) + "\n")

    s = sorted(lat)
    print()
    print(f"{args.label}: {args.files} files, {len(lat) * args.per_file} emails measured, {missing} missing"
          + (f", {unmatched} unexpected emails" if unmatched else ""))
    if s:
        if args.per_file > 1:
            print(f"  rename -> all {args.per_file} emails accepted by the SMTP server (ms)")
        else:
            print("  rename -> email accepted by the SMTP server (ms)")
        print(f"    min {s[0]:7.1f}   median {statistics.median(s):7.1f}   mean {statistics.fmean(s):7.1f}")
        print(f"    p90 {pct(s, 90):7.1f}   p99    {pct(s, 99):7.1f}   max  {s[-1]:7.1f}")
    if args.per_file > 1 and first_lat:
        print(f"  rename -> first of the {args.per_file} accepted: median {statistics.median(first_lat):.1f} ms")
    if to_mail_from:
        a, b = sorted(to_mail_from), sorted(mail_to_accept)
        print("  where it goes (medians): "
              f"rename -> MAIL FROM {statistics.median(a):.1f} ms, "
              f"MAIL FROM -> accepted {statistics.median(b):.1f} ms")
    med = statistics.median(s) if s else float("inf")
    ok = missing == 0 and med < args.target_ms
    print(f"  median {med:.1f} ms   target < {args.target_ms:.0f} ms   {'PASS' if ok else 'FAIL'}"
          + ("" if missing == 0 else f" ({missing} emails missing)"))
    print(f"RESULT: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

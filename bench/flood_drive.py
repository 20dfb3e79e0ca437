#!/usr/bin/env python3
"""Drive the alert-flood part of scripts/bench-intake-bounds.

    python3 bench/flood_drive.py --feed-dir DIR --maildir DIR --flood N [--timeout S]

Writes a drug_testing CSV of N rows, each a different sample that the
benchmark's `flood` rule (kind match, severity warning, max_alerts >= N)
turns into its own alert, and renames it into the feed folder. Right after
that rename it renames in a second file: one sample holding protonitazene,
which the `nitazene` rule (severity critical) alerts on.

Measures, from the SMTP test server's records (`received_at`, one JSON file
per accepted message):
  - time to first alert of the nitazene file: its rename -> its email accepted;
  - how many flood emails the server accepted before it;
  - when the flood was fully delivered, if it was within --timeout.

Prints `nitazene_latency_s=...` and the other figures as key=value lines.
Exit status: 0 if the nitazene email arrived, 1 if not within --timeout s.
"""

import argparse
import json
import os
import re
import sys
import time

HEADER = ("sample_id,received_at,tested_at,lab,source,district,postcode_district,purchased_as,form,"
          "colour,marking,substances_major,substances_minor,amount_mg_per_unit,linked_harm,notes\n")
DISTRICTS = ["Bolton", "Bury", "Manchester", "Oldham", "Rochdale", "Salford", "Stockport",
             "Tameside", "Trafford", "Wigan"]
SEQ = re.compile(r"^(\d{6})\.json$")
NITAZENE_ID = "NITAZENE-AFTER-FLOOD"


def stamp():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_then_rename(feed_dir, name, text):
    tmp = os.path.join(feed_dir, f".{name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(feed_dir, name))
    return time.time()


def flood_csv(n):
    now = stamp()
    rows = [HEADER]
    for i in range(n):
        district = DISTRICTS[i % len(DISTRICTS)]
        rows.append(f"FLOOD-{i:06d},{now},{now},MANDRAKE,drug_service,{district},,unknown,powder,white,,"
                    f"novel-substance-{i:06d},,,none,Flood sample {i}.\n")
    return "".join(rows)


def nitazene_csv():
    now = stamp()
    return (HEADER + f"{NITAZENE_ID},{now},{now},MANDRAKE,drug_service,Bolton,BL1,oxycodone 80mg,tablet,"
            "green,OC 80,protonitazene,paracetamol,,non_fatal_overdose,Benchmark nitazene sample.\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--feed-dir", required=True)
    p.add_argument("--maildir", required=True)
    p.add_argument("--flood", type=int, default=5000)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()

    flood_text = flood_csv(args.flood)
    nitazene_text = nitazene_csv()
    flood_at = write_then_rename(args.feed_dir, "flood.csv", flood_text)
    nitazene_at = write_then_rename(args.feed_dir, "nitazene.csv", nitazene_text)

    seen = set()
    received = []          # (received_at, is_nitazene)
    nitazene_received = None
    flood_done = None
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        for name in sorted(n for n in os.listdir(args.maildir) if SEQ.match(n) and n not in seen):
            try:
                with open(os.path.join(args.maildir, name), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue  # not complete yet: read it next time round
            seen.add(name)
            data = record.get("data", "")
            is_nitazene = "X-Earlywarn-Rule: nitazene" in data
            received.append((record["received_at"], is_nitazene))
            if is_nitazene and nitazene_received is None:
                nitazene_received = record["received_at"]
        flood_count = sum(1 for _, nit in received if not nit)
        if flood_done is None and flood_count >= args.flood:
            flood_done = max(t for t, nit in received if not nit)
        if nitazene_received is not None and flood_done is not None:
            break
        if nitazene_received is not None and time.time() - nitazene_at > 30:
            break  # the figure is taken; the rest of the flood is not what is measured
        time.sleep(0.05)

    print(f"flood_rows={args.flood}")
    print(f"flood_emails_received={sum(1 for _, nit in received if not nit)}")
    if nitazene_received is None:
        print(f"nitazene_latency_s=none (not delivered within {args.timeout:.0f} s)")
        return 1
    before = sum(1 for t, nit in received if not nit and t < nitazene_received)
    print(f"nitazene_latency_s={nitazene_received - nitazene_at:.3f}")
    print(f"flood_emails_before_nitazene={before}")
    if flood_done is not None:
        print(f"flood_delivered_s={flood_done - flood_at:.1f}")
    else:
        print("flood_delivered_s=not measured (still draining when the nitazene figure was taken)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

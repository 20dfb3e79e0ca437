#!/usr/bin/env python3
"""Generate a realistic, deterministic drug_testing feed for benchmarks.

    python3 bench/gen_drug_testing.py N OUT.csv [--seed S] [--start 2025-01-01] [--days 365]

Writes N rows with the drug_testing columns of SPEC section 3.1, in time order
(tested_at increases through the file), spread over --days days from --start.
The same N, seed, start and days always give the same bytes.

What the rows look like:
  * ten Greater Manchester districts, each with its own postcode districts,
    weighted roughly by population and drug-service activity;
  * what people thought they bought (heroin, cocaine, MDMA, "diazepam",
    "oxycodone", THC vapes, ...) and what the lab found, including the usual
    cutting agents in substances_minor and ';'-separated lists;
  * a small share (about 0.5 %) of the dangerous findings the early-warning
    rules look for: nitazenes in fake oxycodone and heroin, xylazine and
    medetomidine in heroin, plus street benzodiazepines in fake diazepam,
    synthetic cannabinoids in THC vapes and cathinones sold as MDMA at the
    rates seen in UK drug checking;
  * substance names spelled as labs spell them (capitals, hyphens, spaces),
    so list matching has to normalise;
  * a free-text notes column (sensitive) that sometimes holds commas and
    quotes, so CSV quoting is exercised.

Standard library only. 1,000,000 rows take about 10 to 20 seconds.
"""

import argparse
import bisect
import csv
import datetime as dt
import random
import sys

COLUMNS = [
    "sample_id", "received_at", "tested_at", "lab", "source", "district",
    "postcode_district", "purchased_as", "form", "colour", "marking",
    "substances_major", "substances_minor", "amount_mg_per_unit", "linked_harm", "notes",
]

# District -> (weight, postcode districts it covers).
DISTRICTS = {
    "Manchester": (24, ["M1", "M2", "M3", "M4", "M8", "M9", "M11", "M12", "M13", "M14",
                        "M15", "M16", "M18", "M19", "M20", "M21", "M22", "M23", "M40"]),
    "Salford": (11, ["M3", "M5", "M6", "M7", "M27", "M28", "M30", "M44", "M50"]),
    "Bolton": (10, ["BL1", "BL2", "BL3", "BL4", "BL5", "BL6", "BL7"]),
    "Wigan": (9, ["WN1", "WN2", "WN3", "WN4", "WN5", "WN6", "WN7", "M29", "M46"]),
    "Oldham": (8, ["OL1", "OL2", "OL3", "OL4", "OL8", "OL9"]),
    "Rochdale": (8, ["OL10", "OL11", "OL12", "OL16", "M24"]),
    "Stockport": (8, ["SK1", "SK2", "SK3", "SK4", "SK5", "SK6", "SK7", "SK8"]),
    "Tameside": (8, ["OL5", "OL6", "OL7", "SK14", "SK15", "SK16", "M34", "M43"]),
    "Bury": (7, ["BL0", "BL8", "BL9", "M25", "M26", "M45"]),
    "Trafford": (7, ["M16", "M17", "M31", "M32", "M33", "M41", "WA14", "WA15"]),
}

LABS = [("MANDRAKE", 70), ("WEDINOS", 20), ("The Loop", 10)]
LAB_PREFIX = {"MANDRAKE": "MDK", "WEDINOS": "WED", "The Loop": "TLP"}

SOURCES = [("drug_service", 45), ("police_seizure", 25), ("amnesty_bin", 15), ("event", 10), ("other", 5)]

# Profiles: purchased_as -> (weight, form, colours, markings, usual majors, usual minors, mg range or None).
# Markings and mg apply to tablets only.
PROFILES = [
    ("heroin", 20, "powder", ["brown", "light brown", "beige", "off-white"], [""],
     [["heroin"], ["heroin"], ["heroin", "caffeine"]],
     [["caffeine;paracetamol"], ["paracetamol"], ["caffeine"], [""], ["noscapine;papaverine"]], None),
    ("crack cocaine", 10, "rock", ["off-white", "cream", "yellowish"], [""],
     [["cocaine"]], [["levamisole"], ["phenacetin"], [""], ["benzocaine;levamisole"]], None),
    ("cocaine", 14, "powder", ["white"], [""],
     [["cocaine"], ["cocaine"], ["cocaine"], ["benzocaine"], ["lidocaine"]],
     [["levamisole"], ["phenacetin;levamisole"], ["benzocaine"], ["lidocaine"], [""], ["caffeine"]], None),
    ("MDMA", 9, "crystal", ["white", "brown", "clear"], [""],
     [["MDMA"], ["MDMA"], ["MDMA"], ["MDA"]], [[""], ["caffeine"]], None),
    ("ecstasy pill", 7, "tablet", ["pink", "blue", "orange", "green", "yellow", "purple"],
     ["Tesla", "Blue Punisher", "Philipp Plein", "Rolex", "Superman", "Red Bull", "Heineken", "Pink Pharaoh"],
     [["MDMA"], ["MDMA"], ["MDMA"], ["MDMA", "caffeine"]], [[""], ["caffeine"], ["lactose"]], (60, 280)),
    ("ketamine", 8, "powder", ["white", "off-white"], [""],
     [["ketamine"], ["ketamine"], ["ketamine"], ["2F-deschloroketamine"]], [[""], ["caffeine"]], None),
    ("diazepam", 8, "tablet", ["blue", "yellow", "white"], ["MSJ 10", "DAN 5620", "DZ 10", "T 10", ""],
     [["diazepam"], ["diazepam"], ["bromazolam"], ["etizolam"]], [[""], ["lactose"], ["microcrystalline cellulose"]], (1, 15)),
    ("Xanax", 4, "tablet", ["white", "peach", "blue"], ["XANAX 2", "2031 V", "S 903", ""],
     [["alprazolam"], ["bromazolam"], ["bromazolam"], ["flubromazolam"]], [[""], ["lactose"]], (0.5, 4)),
    ("oxycodone 80mg", 2, "tablet", ["green", "blue"], ["OC 80", "M 30", "80", ""],
     [["oxycodone"], ["oxycodone"], ["oxycodone"], ["heroin"]], [["paracetamol"], [""]], (5, 80)),
    ("cannabis", 6, "herbal", ["green", "brown"], [""],
     [["THC"], ["THC", "CBD"], ["THC"]], [[""], ["CBN"]], None),
    ("THC vape", 3, "liquid", ["amber", "clear", "yellow"], [""],
     [["THC"], ["THC"], ["HHC"]], [[""], ["terpenes"], ["vitamin E acetate"]], None),
    ("spice", 2, "paper", ["white", "beige"], [""],
     [["MDMB-4en-PINACA"], ["ADB-BUTINACA"], ["MDMB-4en-PINACA"]], [[""]], None),
    ("amphetamine", 4, "paste", ["white", "pink", "grey"], [""],
     [["amphetamine"], ["amphetamine", "caffeine"]], [["caffeine"], [""], ["glucose"]], None),
    ("pregabalin", 2, "capsule", ["white", "orange"], ["PGN 300", "300", ""],
     [["pregabalin"]], [[""]], (50, 300)),
    ("2C-B", 1, "tablet", ["pink", "white"], ["Nexus", ""],
     [["2C-B"], ["2C-B"], ["MDMA"]], [[""]], (5, 30)),
    ("unknown", 2, "powder", ["white", "brown", "grey"], [""],
     [["caffeine"], ["paracetamol"], ["unidentified compound"], ["no controlled substance detected"]],
     [[""], ["lactose"]], None),
]

# Dangerous findings: (share of all rows, purchased_as they turn up in, majors, minors, harm weights).
# The first five add up to about 0.5 % of rows: the findings a drugs early-warning lead must hear about today.
ADULTERANTS = [
    (0.0020, ["heroin", "oxycodone 80mg", "diazepam"],
     ["protonitazene", "N-Desethylisotonitazene", "metonitazene", "isotonitazene", "N-pyrrolidino protonitazene",
      "Etonitazepyne", "butonitazene", "unspecified nitazene"]),
    (0.0015, ["heroin"], ["xylazine", "xylazine", "detomidine"]),
    (0.0010, ["heroin", "crack cocaine"], ["medetomidine", "dexmedetomidine"]),
    (0.0003, ["heroin", "cocaine"], ["fentanyl", "carfentanil", "acetylfentanyl"]),
    (0.0002, ["unknown", "ecstasy pill", "ketamine"], ["isotonitazepyne", "N-desethyl etonitazene", "fluetonitazene", "PMMA", "PMA"]),
    # Less acute, more frequent.
    (0.0040, ["THC vape", "cannabis"], ["MDMB-4en-PINACA", "ADB-BUTINACA", "5F-MDMB-PICA"]),
    (0.0040, ["MDMA", "ecstasy pill", "cocaine"], ["4-CMC", "3-CMC", "N,N-dimethylpentylone", "eutylone"]),
]

HARMS = [("none", 930), ("non_fatal_overdose", 35), ("hospital_admission", 30), ("fatal_overdose", 3)]
HARMS_DANGEROUS = [("none", 50), ("non_fatal_overdose", 25), ("hospital_admission", 15), ("fatal_overdose", 10)]

NOTES = [
    ("", 40),
    ("Expected result.", 20),
    ("Handed in at the needle exchange.", 5),
    ("Amnesty bin, city centre venue.", 4),
    ("Street-level seizure.", 4),
    ("Bought online, delivered by post.", 3),
    ("Service user reported an unexpectedly strong effect.", 3),
    ("Bought as \"pharmacy\" tablets, blister pack looked genuine.", 2),
    ("Repeat sample from the same batch, for confirmation.", 2),
    ("Seized at a house; several bags, same colour and smell.", 2),
    ("Sample weight low, result indicative only.", 2),
    ("Users reported unusually long sedation; naloxone given.", 1),
    ("Slow-healing wound reported away from injection sites.", 1),
    ("Strong vinegar smell, sticky texture.", 1),
    ("Linked to a hospital admission the same week, A&E informed.", 1),
]


def cumulative(pairs):
    values, weights, total = [], [], 0
    for value, weight in pairs:
        total += weight
        values.append(value)
        weights.append(total)
    return values, weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", type=int, help="number of rows to write")
    p.add_argument("out", help="output CSV path ('-' for stdout)")
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--start", default="2025-01-01", help="first day (UTC), YYYY-MM-DD")
    p.add_argument("--days", type=float, default=365.0, help="days the rows are spread over")
    args = p.parse_args(argv)
    if args.rows < 0:
        p.error("rows must be >= 0")

    rng = random.Random(args.seed)
    rand = rng.random
    bisect_right = bisect.bisect_right

    # Cheaper than random.choice/choices/randint (a third of the run time otherwise);
    # still fully determined by the seed.
    def choice(seq):
        return seq[int(rand() * len(seq))]

    def randint(a, b):
        return a + int(rand() * (b - a + 1))

    districts, district_cw = cumulative((d, w) for d, (w, _) in DISTRICTS.items())
    postcodes = {d: pcs for d, (_, pcs) in DISTRICTS.items()}
    labs, lab_cw = cumulative(LABS)
    sources, source_cw = cumulative(SOURCES)
    profiles, profile_cw = cumulative((p, p[1]) for p in PROFILES)
    by_name = {p[0]: p for p in PROFILES}
    harms, harm_cw = cumulative(HARMS)
    harms_d, harm_d_cw = cumulative(HARMS_DANGEROUS)
    notes, notes_cw = cumulative(NOTES)
    adulterant_total = sum(a[0] for a in ADULTERANTS)

    def pick(values, cw):
        return values[bisect_right(cw, rand() * cw[-1])]

    start = dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.timezone.utc)
    start_s = int(start.timestamp())
    span = args.days * 86400.0
    step = span / max(args.rows, 1)
    day_cache = {}
    clock = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400)]

    def rfc3339(t):
        day, sec = divmod(int(t), 86400)
        date = day_cache.get(day)
        if date is None:
            date = dt.datetime.fromtimestamp(day * 86400, dt.timezone.utc).strftime("%Y-%m-%d")
            day_cache[day] = date
        return date + clock[sec]

    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="", encoding="utf-8")
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(COLUMNS)
        year = start.strftime("%y")
        seq = {lab: 0 for lab in labs}
        batch = []
        for i in range(args.rows):
            # Monotonic: (i + r) * step with 0 <= r < 1 never goes backwards.
            tested = start_s + (i + rand()) * step
            received = tested - randint(2 * 3600, 5 * 86400)

            lab = pick(labs, lab_cw)
            seq[lab] += 1
            sample_id = f"{LAB_PREFIX[lab]}-{year}-{seq[lab]:07d}"
            district = pick(districts, district_cw)
            postcode = choice(postcodes[district])
            source = pick(sources, source_cw)

            u = rand()
            dangerous = None
            if u < adulterant_total:
                acc = 0.0
                for share, sold_as, found in ADULTERANTS:
                    acc += share
                    if u < acc:
                        dangerous = (sold_as, found)
                        break
            if dangerous:
                prof = by_name[choice(dangerous[0])]
            else:
                prof = pick(profiles, profile_cw)
            name, _, form, colours, markings, majors, minors, mg = prof
            major = list(choice(majors))
            minor = choice(minors)[0]
            if dangerous:
                finding = choice(dangerous[1])
                # Sometimes the only active, sometimes alongside what was expected.
                if rand() < 0.5:
                    major = [finding]
                else:
                    major.append(finding)
                harm = pick(harms_d, harm_d_cw)
            else:
                harm = pick(harms, harm_cw)
            marking = choice(markings)
            amount = f"{mg[0] + rand() * (mg[1] - mg[0]):.1f}" if mg and rand() < 0.8 else ""
            note = pick(notes, notes_cw)
            if note and rand() < 0.02:
                # A multi-line note, as typed into a lab's free-text box.
                note += "\nFollow-up: result shared with the local drug service."
            batch.append((
                sample_id, rfc3339(received), rfc3339(tested), lab, source, district, postcode,
                name, form, choice(colours), marking, ";".join(major), minor, amount, harm, note,
            ))
            if len(batch) >= 10000:
                w.writerows(batch)
                batch.clear()
        w.writerows(batch)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

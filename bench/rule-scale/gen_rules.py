#!/usr/bin/env python3
"""Generate a large, varied rule file for the drug_testing feed (scripts/bench-rule-scale).

    python3 bench/rule-scale/gen_rules.py N OUT.toml [--seed S]

Writes N rules that `earlywarn check` accepts with the partners of bench/replay/config.toml:
mostly `match` rules built from sixteen shapes a rule writer uses (named lists and list
literals with `in`, `==` / `!=`, numbers with `>` / `>=` / `<`, regular expressions `~` /
`!~`, `exists`, `not`, and/or and parentheses) over every drug_testing column, with varied
severities, partners, review, group_by and cooldowns; and about 2 % of the other kinds:
threshold, first_seen, rate, deadline (opened and closed by drug_testing records) and
silence. Twelve named lists come first. The same N and seed always give the same file.
Most rules match a few rows in a thousand of bench/gen_drug_testing.py's data, some none.
Three of the sixteen shapes hold no test the rule index can look up (only orderings,
`!=`, `not`, `not in`, `not exists`), as some real rules do: those rules are evaluated
on every row; the rest only on rows holding one of their values.
Standard library only.
"""

import argparse
import random
import sys

LISTS = {
    "nitazenes": ["isotonitazene", "protonitazene", "metonitazene", "etonitazene", "butonitazene",
                  "N-desethyl isotonitazene", "N-pyrrolidino protonitazene", "etonitazepyne",
                  "unspecified nitazene", "isotonitazepyne", "N-desethyl etonitazene", "fluetonitazene"],
    "fentanyls": ["fentanyl", "carfentanil", "acetylfentanyl", "furanylfentanyl", "ocfentanil"],
    "xylazine_like": ["xylazine", "detomidine", "romifidine"],
    "medetomidine": ["medetomidine", "dexmedetomidine", "levomedetomidine"],
    "street_benzos": ["bromazolam", "flubromazolam", "etizolam", "flualprazolam", "clonazolam",
                      "desalkylgidazepam", "phenazepam", "diclazepam"],
    "cannabinoids": ["MDMB-4en-PINACA", "ADB-BUTINACA", "5F-MDMB-PICA", "ADB-4en-PINACA", "MDMB-INACA"],
    "cathinones": ["4-CMC", "3-CMC", "3-MMC", "mephedrone", "N,N-dimethylpentylone", "eutylone", "alpha-PVP"],
    "opioids": ["heroin", "oxycodone", "morphine", "codeine", "methadone", "buprenorphine", "tramadol"],
    "stimulants": ["cocaine", "amphetamine", "methamphetamine", "MDMA", "MDA"],
    "ketamine_analogues": ["2F-deschloroketamine", "deschloroketamine", "methoxetamine", "O-PCE"],
    "cutting_agents": ["caffeine", "paracetamol", "levamisole", "phenacetin", "benzocaine", "lidocaine"],
    "phenethylamines": ["PMA", "PMMA", "2C-B", "4-FA", "2C-I"],
}
SUBSTANCES = sorted({s for v in LISTS.values() for s in v} | {"THC", "CBD", "HHC", "ketamine", "diazepam",
                                                             "alprazolam", "pregabalin", "MDA", "lactose"})
DISTRICTS = ["Bolton", "Bury", "Manchester", "Oldham", "Rochdale", "Salford", "Stockport", "Tameside",
             "Trafford", "Wigan"]
PURCHASED = ["heroin", "crack cocaine", "cocaine", "MDMA", "ecstasy pill", "ketamine", "diazepam", "Xanax",
             "oxycodone 80mg", "cannabis", "THC vape", "spice", "amphetamine", "pregabalin", "2C-B", "unknown"]
PURCHASED_RE = ["(?i)oxy", "(?i)diazepam|valium", "(?i)xanax|alprazolam", "(?i)mdma|ecstasy|molly",
                "(?i)cannabis|thc|vape", "(?i)coke|cocaine", "(?i)^heroin$", "(?i)ket", "(?i)spice|mamba"]
FORMS = ["powder", "rock", "crystal", "tablet", "herbal", "liquid", "paper", "paste", "capsule"]
COLOURS = ["brown", "white", "off-white", "pink", "blue", "green", "yellow", "orange", "purple", "clear"]
MARKINGS_RE = ["(?i)tesla", "(?i)punisher", "(?i)rolex", "(?i)^OC ?80$", "(?i)MSJ", "(?i)xanax", "(?i)^2031"]
SOURCES = ["drug_service", "police_seizure", "amnesty_bin", "event", "other"]
LABS = ["MANDRAKE", "WEDINOS", "The Loop"]
HARMS = ["none", "non_fatal_overdose", "hospital_admission", "fatal_overdose"]
NOTE_WORDS = ["naloxone", "sedation", "wound", "A&E", "blister", "online", "vinegar", "batch", "strong"]
PARTNERS = ["dews-panel", "lead-bolton", "lead-manchester", "lead-salford", "lead-east", "lead-south-west",
            "drug-service", "public-health"]
SEVERITIES = ["info", "warning", "critical"]
COOLDOWNS = [None, "1h", "6h", "12h", "24h", "3d", "7d"]


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lit(values):
    return "[" + ", ".join(q(v) for v in values) + "]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=2025)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    ch, sample = rng.choice, rng.sample

    def some_substances(k=None):
        return sample(SUBSTANCES, k or rng.randint(1, 4))

    def substance_test():
        """A test on substances: a named list, a literal list, major or either column."""
        target = ch(list(LISTS)) if rng.random() < 0.6 else lit(some_substances())
        if rng.random() < 0.4:
            return f"(substances_major in {target} or substances_minor in {target})"
        return f"substances_major in {target}"

    shapes = [
        lambda: substance_test(),
        lambda: f"purchased_as == {q(ch(PURCHASED))} and {substance_test()}",
        lambda: f"purchased_as ~ {q(ch(PURCHASED_RE))} and not ({substance_test()})",
        lambda: f'form == "tablet" and {substance_test()} and amount_mg_per_unit {ch([">", ">="])} {rng.randint(1, 300)}',
        lambda: f"district == {q(ch(DISTRICTS))} and linked_harm {ch(['!=', '=='])} {q(ch(HARMS))}",
        lambda: f"district in {lit(sample(DISTRICTS, rng.randint(2, 4)))} and {substance_test()} and source != {q(ch(SOURCES))}",
        lambda: f"lab == {q(ch(LABS))} and colour == {q(ch(COLOURS))} and exists(marking)",
        lambda: f"postcode_district ~ {q('^' + ch(['M', 'OL', 'BL', 'SK', 'WN', 'WA']) + str(rng.randint(1, 9)) + '$')} and {substance_test()}",
        lambda: f"notes ~ {q('(?i)' + ch(NOTE_WORDS))} and linked_harm != \"none\"",
        lambda: f"marking ~ {q(ch(MARKINGS_RE))} and not exists(amount_mg_per_unit)",
        lambda: f"(form == {q(ch(FORMS))} or form == {q(ch(FORMS))}) and colour != {q(ch(COLOURS))} and {substance_test()}",
        lambda: f"source == {q(ch(SOURCES))} and lab !~ {q('(?i)^' + ch(LABS).lower() + '$')} and {substance_test()}",
        lambda: f"amount_mg_per_unit < {rng.randint(1, 20)} and purchased_as in {lit(sample(PURCHASED, 3))}",
        # Shapes with no equality, list or regex test that must hold: the rule index
        # (src/rules/index.rs) cannot rule them out, so they are evaluated on every row.
        lambda: f'amount_mg_per_unit {ch([">", ">="])} {rng.randint(100, 400)} and linked_harm != "none"',
        lambda: f"not (source in {lit(sample(SOURCES, 2))}) and amount_mg_per_unit > {rng.randint(150, 300)}",
        lambda: f"substances_major not in {ch(list(LISTS))} and amount_mg_per_unit > {rng.randint(200, 300)} and not exists(marking)",
    ]

    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    w = out.write
    w(f"# {args.n} generated rules for scripts/bench-rule-scale (bench/rule-scale/gen_rules.py, seed {args.seed}).\n\n")
    w("[lists]\n")
    for name, values in LISTS.items():
        w(f"{name} = {lit(values)}\n")
    n_other = max(6, args.n // 50)
    kinds = ["threshold", "first_seen", "rate", "deadline", "silence"]
    for i in range(1, args.n + 1):
        kind = kinds[(i - 1) % len(kinds)] if i > args.n - n_other else "match"
        if kind == "silence" and i > args.n - n_other + 5:
            kind = "threshold"  # one silence rule is plenty: a feed has one silence to watch
        w("\n[[rule]]\n")
        w(f'id = "gen-{kind.replace("_", "-")}-{i:04d}"\n')
        w(f'name = "Generated {kind} rule {i}"\n')
        w('feed = "drug_testing"\n')
        if kind != "match":
            w(f'kind = "{kind}"\n')
        if kind == "match":
            w(f"when = '{ch(shapes)()}'\n")
        elif kind == "threshold":
            w(f"when = '{substance_test()}'\n")
            w(f"count = {rng.randint(3, 20)}\nwithin = {q(ch(['24h', '3d', '7d']))}\n")
        elif kind == "first_seen":
            w(f"field = {q(ch(['substances_major', 'substances_minor', 'marking']))}\n")
            w(f"known = {lit(some_substances(6))}\n")
        elif kind == "rate":
            w(f"when = '{substance_test()}'\n")
            w(f'within = "7d"\nbaseline = "28d"\nfactor = {ch([1.5, 2.0, 3.0])}\nmin_count = {rng.randint(3, 10)}\n')
        elif kind == "deadline":
            # Opened by a rare finding (about 0.1 % of rows), as a follow-up a lab must record.
            w(f"when = 'lab == {q(ch(LABS))} and substances_major in {ch(['nitazenes', 'fentanyls', 'xylazine_like', 'medetomidine'])}'\n")
            w('key = "sample_id"\n')
            w('until = { feed = "drug_testing", when = \'notes ~ "(?i)follow-up"\' }\n')
            w('within = "48h"\n')
        elif kind == "silence":
            w('for = "4d"\n')
        w(f"severity = {q(ch(SEVERITIES))}\n")
        notify = sample(PARTNERS, rng.randint(1, 4))
        w(f"notify = {lit(notify)}\n")
        if kind in ("match", "threshold", "rate") and rng.random() < 0.3:
            w('review = ["dews-panel"]\n')
        if kind in ("match", "threshold", "rate") and rng.random() < 0.8:
            w(f"group_by = {lit(ch([['district'], ['district'], ['lab'], ['district', 'lab']]))}\n")
        cooldown = ch(COOLDOWNS)
        if cooldown and kind in ("match", "threshold", "first_seen"):
            w(f"cooldown = {q(cooldown)}\n")
        if rng.random() < 0.2:
            w('subject = "{{ rule.name }}: {{ count }} record(s)"\n')
        if rng.random() < 0.5:
            w(f'advice = "Generated advice for rule {i}: check with the lab and the district lead."\n')
    if out is not sys.stdout:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generate a "national" rule file: the 20 bench/replay rules written once per area (scripts/bench-rule-scale).

    python3 bench/rule-scale/gen_national.py N OUT.toml [--rules bench/replay/rules.toml]

A national early-warning network is many regions, each running the same kind of rules
for its own area. This writes N rules (N >= 100) that `earlywarn check` accepts with the
partners of bench/replay/config.toml:

  * about 90 % of them: each of the 20 match rules of bench/replay/rules.toml (its lists,
    severity, review, notify, group_by, cooldown, subject and advice unchanged) copied for
    each of S scopes, its `when` narrowed to the scope:
        postcode_district in ["M1", "M2"] and (<the original when>)
    The S scopes partition bench/gen_drug_testing.py's postcode districts (each scope a few
    postcode districts of one local authority), so every row is in exactly one scope and
    the copies of a rule together match what the original matches: matches per row stay
    the 20 rules'.
  * the other ~10 %: rules with no test the rule index can look up, as some real rules are
    (orderings, `!=`, `not in`): `amount_mg_per_unit > T and linked_harm != "none" ...`,
    with thresholds high enough that each matches rarely, like a scoped rule. They carry no
    scope test: `postcode_district in [...]` would make them indexable.

S = (N - N // 10) // 20, so N = 1000 gives 45 scopes x 20 = 900 copies and 100 others.
The same N always gives the same file. Standard library only (tomllib: Python 3.11).
"""

import argparse
import json
import sys
import tomllib
from pathlib import Path

# bench/gen_drug_testing.py's postcode districts by local authority (a postcode shared by
# two authorities there, M3 and M16, is listed once: a scope is a set of postcodes).
POSTCODES = {
    "Manchester": ["M1", "M2", "M3", "M4", "M8", "M9", "M11", "M12", "M13", "M14",
                   "M15", "M16", "M18", "M19", "M20", "M21", "M22", "M23", "M40"],
    "Salford": ["M5", "M6", "M7", "M27", "M28", "M30", "M44", "M50"],
    "Bolton": ["BL1", "BL2", "BL3", "BL4", "BL5", "BL6", "BL7"],
    "Wigan": ["WN1", "WN2", "WN3", "WN4", "WN5", "WN6", "WN7", "M29", "M46"],
    "Oldham": ["OL1", "OL2", "OL3", "OL4", "OL8", "OL9"],
    "Rochdale": ["OL10", "OL11", "OL12", "OL16", "M24"],
    "Stockport": ["SK1", "SK2", "SK3", "SK4", "SK5", "SK6", "SK7", "SK8"],
    "Tameside": ["OL5", "OL6", "OL7", "SK14", "SK15", "SK16", "M34", "M43"],
    "Bury": ["BL0", "BL8", "BL9", "M25", "M26", "M45"],
    "Trafford": ["M17", "M31", "M32", "M33", "M41", "WA14", "WA15"],
}

# The unindexable shapes: (when, with {t} a threshold). Thresholds above most tablets'
# amounts (ecstasy pills go to 280 mg, pregabalin capsules to 300 mg), so they match rarely.
UNINDEXED = [
    'amount_mg_per_unit > {t} and linked_harm != "none"',
    'amount_mg_per_unit >= {t} and linked_harm != "none" and source != "police_seizure"',
    'substances_major not in opioids and amount_mg_per_unit > {t} and linked_harm != "none"',
    'not (source in ["police_seizure", "amnesty_bin"]) and amount_mg_per_unit > {t} and linked_harm != "none"',
]


def scopes(count):
    """`count` sets of postcodes covering every postcode once, each within one authority."""
    pcs = [(area, pc) for area, codes in POSTCODES.items() for pc in codes]
    if not len(POSTCODES) <= count <= len(pcs):
        sys.exit(f"gen_national.py: {count} scopes; between {len(POSTCODES)} and {len(pcs)} possible")
    # Scopes per authority in proportion to its postcodes, at least one each.
    share = {a: max(1, round(count * len(c) / len(pcs))) for a, c in POSTCODES.items()}
    while sum(share.values()) > count:
        a = max(share, key=lambda a: share[a])
        share[a] -= 1
    while sum(share.values()) < count:
        a = max(share, key=lambda a: len(POSTCODES[a]) / share[a])
        share[a] += 1
    out = []
    for area, codes in POSTCODES.items():
        k = share[area]
        for j in range(k):
            out.append((area, codes[j * len(codes) // k:(j + 1) * len(codes) // k]))
    return out


def q(value):
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("--rules", default=str(Path(__file__).resolve().parents[1] / "replay" / "rules.toml"))
    args = ap.parse_args(argv)
    if args.n < 100:
        sys.exit("gen_national.py: N must be at least 100")
    with open(args.rules, "rb") as f:
        base = tomllib.load(f)
    rules = base["rule"]
    n_other = args.n // 10
    n_scopes = (args.n - n_other) // len(rules)
    n_other = args.n - n_scopes * len(rules)
    areas = scopes(n_scopes)

    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    w = out.write
    w(f"# {args.n} national rules for scripts/bench-rule-scale (bench/rule-scale/gen_national.py):\n")
    w(f"# the {len(rules)} rules of bench/replay/rules.toml for each of {n_scopes} scopes, and {n_other} unindexable rules.\n\n")
    w("[lists]\n")
    for name, values in base.get("lists", {}).items():
        w(f"{name} = [{', '.join(q(v) for v in values)}]\n")
    for s, (area, codes) in enumerate(areas, 1):
        scope = f"postcode_district in [{', '.join(q(c) for c in codes)}]"
        for rule in rules:
            w("\n[[rule]]\n")
            for key, value in rule.items():
                if key == "id":
                    value = f"{value}-s{s:02d}"
                elif key == "name":
                    value = f"{value} ({area} {'/'.join(codes)})"
                elif key == "when":
                    value = f"{scope} and ({' '.join(value.split())})"
                w(f"{key} = {toml_value(value)}\n")
    partners = sorted({p for r in rules for p in r["notify"]})
    for i in range(n_other):
        area = areas[i % len(areas)][0]
        shape = UNINDEXED[i % len(UNINDEXED)]
        threshold = 250 + (i * 37) % 200
        w("\n[[rule]]\n")
        w(f'id = "high-dose-harm-{i + 1:03d}"\n')
        w(f'name = {q(f"High-dose unit linked to harm ({area} rule {i + 1})")}\n')
        w('feed = "drug_testing"\n')
        w(f"when = {toml_value(shape.format(t=threshold))}\n")
        w(f'severity = {q(["warning", "critical"][i % 2])}\n')
        w(f"notify = [{q(partners[i % len(partners)])}]\n")
        w('group_by = ["district"]\n')
        w('cooldown = "24h"\n')
    if out is not sys.stdout:
        out.close()
    return 0


def toml_value(value):
    if isinstance(value, str):
        # A literal string where it can be one: conditions read as a rule writer writes them.
        if "'" not in value and "\n" not in value and value.isprintable():
            return f"'{value}'"
        return q(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise SystemExit(f"gen_national.py: cannot write {value!r}")


if __name__ == "__main__":
    sys.exit(main())

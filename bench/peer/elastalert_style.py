#!/usr/bin/env python3
"""The ElastAlert2-style peer of the replay benchmark (scripts/bench-replay).

    python3 bench/peer/elastalert_style.py FILE.csv [--alerts OUT.tsv]

The same 20 rules as bench/replay/rules.toml, over the same CSV file, done the
way an ElastAlert2 deployment does them, as a pure-Python loop:

  * ElastAlert2 pushes each rule's `filter` to Elasticsearch, so its Python
    never evaluates a predicate; without Elasticsearch there is nothing to push
    to, so each rule's filter is a Python function here, written as a careful
    Python programmer would (regexes compiled once, lists as sets of normalised
    terms, each row's substance lists split and normalised once and shared by
    all 20 rules, as earlywarn shares a test between rules);
  * rows come from `csv.DictReader` (ElastAlert2 gets a dict per hit), are
    de-duplicated by record id (ElastAlert2 drops hits it has processed by
    `_id`), and their time is parsed (ElastAlert2's `ts_to_dt` on each hit);
  * `query_key = district` and `realert` are ElastAlert2's group-by and
    cooldown: the matches of one rule and district in a file make one alert
    (as ElastAlert2's `aggregation` with `aggregation_key` does), unless that
    rule and district alerted less than its cooldown before, by event time.

The comparison semantics are earlywarn's (docs/rules.md section 5), so the alert
count must equal earlywarn's on the same file (192 on the 1,000,000-row file):
values are trimmed; `==` / `!=` ignore case; `in` ignores case, spaces and
punctuation; a list field matches `==`, `in`, `~` when any element does and
`!~` when none does; a missing or empty field matches nothing (`not (...)`
turns that round); a value that is not a number is never `>` a number.

Prints one line to stdout: `rows=N seconds=S rows_per_s=R alerts=A`. With
--alerts, writes one line per alert, `rule<TAB>district<TAB>count`, sorted.
Standard library only.
"""

import argparse
import csv
import datetime as dt
import re
import sys
import time

LISTS = {
    "nitazenes": [
        "nitazene", "nitazenes", "unspecified nitazene", "isotonitazene", "protonitazene",
        "metonitazene", "etonitazene", "butonitazene", "flunitazene", "clonitazene",
        "metodesnitazene", "etodesnitazene", "etazene", "ethyleneoxynitazene",
        "isotonitazepyne", "protonitazepyne", "metonitazepyne", "etonitazepyne",
        "N-pyrrolidino etonitazene", "N-pyrrolidino isotonitazene", "N-pyrrolidino protonitazene",
        "N-pyrrolidino metonitazene", "N-piperidinyl etonitazene",
        "N-desethyl isotonitazene", "desethyl isotonitazene", "N-desethyl etonitazene",
        "N-desethyl protonitazene", "N-desethyl metonitazene",
        "isotonitazine", "protonitazine", "metonitazine", "etonitazine", "nitazine",
    ],
    "fentanyls": [
        "fentanyl", "carfentanil", "acetylfentanyl", "furanylfentanyl", "ocfentanil",
        "butyrfentanyl", "para-fluorofentanyl", "4-fluorobutyrfentanyl", "valerylfentanyl",
    ],
    "xylazine_like": ["xylazine", "detomidine", "romifidine"],
    "medetomidine": ["medetomidine", "dexmedetomidine", "levomedetomidine"],
    "street_benzodiazepines": [
        "bromazolam", "flubromazolam", "etizolam", "flualprazolam", "clonazolam",
        "flubromazepam", "diclazepam", "pyrazolam", "phenazepam", "deschloroetizolam",
        "metizolam", "clobromazolam", "desalkylgidazepam", "norfludiazepam",
        "N-desalkylflurazepam", "norflurazepam", "8-aminoclonazolam", "delorazepam",
        "nitrazolam", "bentazepam",
    ],
    "synthetic_cannabinoids": [
        "MDMB-4en-PINACA", "ADB-BUTINACA", "ADB-4en-PINACA", "4F-MDMB-BINACA", "4F-MDMB-BICA",
        "5F-MDMB-PICA", "5F-MDMB-PINACA", "5F-ADB", "MDMB-INACA", "ADB-INACA", "MDMB-BUTINACA",
        "ADB-FUBINACA", "AB-FUBINACA", "MMB-FUBINACA", "ADB-HEXINACA", "CUMYL-4CN-BINACA",
        "5F-CUMYL-PEGACLONE", "MDMB-CHMICA", "AB-CHMINACA", "JWH-018", "XLR-11",
    ],
    "cathinones": [
        "4-CMC", "clephedrone", "3-CMC", "3-MMC", "4-MMC", "mephedrone", "4-MEC",
        "alpha-PVP", "a-PVP", "alpha-PHP", "alpha-PiHP", "N-ethylpentedrone", "NEP",
        "N-ethylhexedrone", "eutylone", "pentylone", "N,N-dimethylpentylone", "dipentylone",
        "methylone", "butylone", "MDPV", "4-MPD",
    ],
    "opioids": ["heroin", "diamorphine", "oxycodone", "morphine", "codeine", "methadone",
                "buprenorphine", "tramadol"],
    "ketamine_analogues": ["2F-deschloroketamine", "2-FDCK", "deschloroketamine", "methoxetamine",
                           "O-PCE", "3-MeO-PCP"],
    "sedatives": ["xylazine", "detomidine", "medetomidine", "dexmedetomidine", "bromazolam",
                  "etizolam", "pregabalin"],
}

LIST_FIELDS = {"substances_major": ";", "substances_minor": ";"}
NOT_TERM = re.compile(r"[\W_]+")


def norm(term):
    """List membership ignores case, spaces, hyphens and other punctuation."""
    return NOT_TERM.sub("", term).lower()


def terms(*values):
    return frozenset(norm(v) for v in values)


L = {name: terms(*values) for name, values in LISTS.items()}
HOUR = 3600
DAY = 24 * HOUR


class Row:
    """One record as the filters see it: trimmed text, lists split, terms normalised once."""

    __slots__ = ("text", "lists", "normed")

    def __init__(self, record):
        text = {}
        lists = {}
        for key, value in record.items():
            if key is None:
                continue
            value = (value or "").strip()
            sep = LIST_FIELDS.get(key)
            if sep is not None:
                items = [p.strip() for p in value.split(sep)]
                items = [p for p in items if p]
                if items:
                    lists[key] = items
            elif value:
                text[key] = value
        self.text = text
        self.lists = lists
        self.normed = {k: [norm(v) for v in items] for k, items in lists.items()}

    def values(self, field):
        """The field's values: a list field's elements, else its text (or none)."""
        items = self.lists.get(field)
        if items is not None:
            return items
        value = self.text.get(field)
        return [value] if value is not None else []

    def any_in(self, field, term_set):
        normed = self.normed.get(field)
        if normed is not None:
            return any(t in term_set for t in normed)
        value = self.text.get(field)
        return value is not None and norm(value) in term_set

    def eq(self, field, expected):
        return any(v.lower() == expected for v in self.values(field))

    def ne(self, field, unexpected):
        return any(v.lower() != unexpected for v in self.values(field))

    def search(self, field, pattern):
        return any(pattern.search(v) for v in self.values(field))

    def no_match(self, field, pattern):
        values = self.values(field)
        return bool(values) and not any(pattern.search(v) for v in values)

    def exists(self, field):
        return bool(self.values(field))

    def gt(self, field, limit, or_equal=False):
        for v in self.values(field):
            try:
                n = float(v)
            except ValueError:
                continue
            if n > limit or (or_equal and n == limit):
                return True
        return False


def rx(pattern):
    return re.compile(pattern)


R_NITAZ_MAJOR = rx(r"(?i)nitaz[ei]n|nitazep|desnitazene")
R_NITAZ_MINOR = rx(r"(?i)nitaz[ei]n|nitazep")
R_OXY = rx(r"(?i)oxy(codone|contin)|\bOC ?80\b")
R_DIAZ = rx(r"(?i)diazepam|valium|xanax|alprazolam")
R_THC = rx(r"(?i)cannabis|thc|vape|edible")
R_MDMA = rx(r"(?i)mdma|ecstasy|molly")
R_UNIDENT = rx(r"(?i)unidentified|unknown")
R_CITY = rx(r"^M[1-4]$")
R_NALOXONE = rx(r"(?i)naloxone")
R_THE_LOOP = rx(r"(?i)^the loop$")
OXYCODONE = terms("oxycodone")
HEROIN = terms("heroin")
MDMA = terms("MDMA")
PMA_MAJOR = terms("PMA", "PMMA", "4-fluoroamphetamine")
PMA_MINOR = terms("PMA", "PMMA")
HARMED = terms("non_fatal_overdose", "hospital_admission")
COCAINE_SOLD = terms("cocaine", "crack cocaine", "crack")
COCAINE = terms("cocaine")
KETAMINE = "ketamine"


def nitazene_listed(r):
    return r.any_in("substances_major", L["nitazenes"]) or r.any_in("substances_minor", L["nitazenes"])


# (rule id, cooldown in seconds, filter): the order and the tests of bench/replay/rules.toml.
RULES = [
    ("nitazene-detected", 6 * HOUR, nitazene_listed),
    ("nitazene-unlisted-name", 24 * HOUR,
     lambda r: (r.search("substances_major", R_NITAZ_MAJOR) or r.search("substances_minor", R_NITAZ_MINOR))
     and not nitazene_listed(r)),
    ("fentanyl-detected", 6 * HOUR,
     lambda r: r.any_in("substances_major", L["fentanyls"]) or r.any_in("substances_minor", L["fentanyls"])),
    ("fatal-overdose-linked", 12 * HOUR, lambda r: r.eq("linked_harm", "fatal_overdose")),
    ("counterfeit-oxycodone", 24 * HOUR,
     lambda r: r.search("purchased_as", R_OXY) and not r.any_in("substances_major", OXYCODONE)),
    ("xylazine-detected", 12 * HOUR,
     lambda r: r.any_in("substances_major", L["xylazine_like"]) or r.any_in("substances_minor", L["xylazine_like"])),
    ("medetomidine-detected", 12 * HOUR,
     lambda r: r.any_in("substances_major", L["medetomidine"]) or r.any_in("substances_minor", L["medetomidine"])),
    ("heroin-with-sedative-and-harm", 24 * HOUR,
     lambda r: r.any_in("substances_major", HEROIN)
     and (r.any_in("substances_major", L["sedatives"]) or r.any_in("substances_minor", L["sedatives"]))
     and r.ne("linked_harm", "none")),
    ("street-benzo-in-fake-diazepam", 7 * DAY,
     lambda r: r.search("purchased_as", R_DIAZ) and r.any_in("substances_major", L["street_benzodiazepines"])),
    ("high-dose-benzo-tablet", 7 * DAY,
     lambda r: r.eq("form", "tablet") and r.any_in("substances_major", L["street_benzodiazepines"])
     and r.gt("amount_mg_per_unit", 3)),
    ("synthetic-cannabinoid-in-thc", 7 * DAY,
     lambda r: r.search("purchased_as", R_THC)
     and (r.any_in("substances_major", L["synthetic_cannabinoids"])
          or r.any_in("substances_minor", L["synthetic_cannabinoids"]))),
    ("high-strength-ecstasy", 7 * DAY,
     lambda r: r.eq("form", "tablet") and r.any_in("substances_major", MDMA)
     and r.gt("amount_mg_per_unit", 250, or_equal=True)),
    ("pma-pmma-detected", 24 * HOUR,
     lambda r: r.any_in("substances_major", PMA_MAJOR) or r.any_in("substances_minor", PMA_MINOR)),
    ("overdose-linked-opioid-sample", 3 * DAY,
     lambda r: r.any_in("linked_harm", HARMED) and r.any_in("substances_major", L["opioids"])
     and r.ne("source", "police_seizure")),
    ("cathinone-sold-as-mdma", 7 * DAY,
     lambda r: r.search("purchased_as", R_MDMA) and r.any_in("substances_major", L["cathinones"])),
    ("ketamine-analogue", 7 * DAY,
     lambda r: r.eq("purchased_as", KETAMINE) and r.any_in("substances_major", L["ketamine_analogues"])),
    ("cocaine-substituted", 7 * DAY,
     lambda r: r.any_in("purchased_as", COCAINE_SOLD) and not r.any_in("substances_major", COCAINE)
     and r.exists("substances_major")),
    ("unidentified-substance", 7 * DAY,
     lambda r: r.search("substances_major", R_UNIDENT) and r.ne("source", "other")),
    ("amnesty-bin-tablet-unmarked-opioid", 7 * DAY,
     lambda r: r.eq("source", "amnesty_bin") and r.eq("form", "tablet") and not r.exists("marking")
     and r.any_in("substances_major", L["opioids"])),
    ("naloxone-mentioned-city-centre", 3 * DAY,
     lambda r: r.search("postcode_district", R_CITY) and r.search("notes", R_NALOXONE)
     and r.no_match("lab", R_THE_LOOP)),
]


def parse_time(text):
    """RFC 3339 as the generator writes it (`2025-01-01T00:00:00Z`), to epoch seconds."""
    return dt.datetime.fromisoformat(text).timestamp()


def replay(path, last_alert):
    """One file as one batch: rows through every rule, then one alert per rule and
    district that matched, unless its cooldown (by event time) holds it back."""
    matches = {}  # (rule, district) -> count
    seen_ids = set()
    rows = 0
    latest = None
    with open(path, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            rows += 1
            sample_id = (record.get("sample_id") or "").strip()
            if sample_id in seen_ids:
                continue
            seen_ids.add(sample_id)
            t = parse_time((record.get("tested_at") or "").strip())
            if latest is None or t > latest:
                latest = t
            r = Row(record)
            district = r.text.get("district", "")
            for rule_id, _cooldown, test in RULES:
                if test(r):
                    key = (rule_id, district)
                    matches[key] = matches.get(key, 0) + 1
    alerts = []
    cooldowns = {rule_id: cooldown for rule_id, cooldown, _ in RULES}
    for key, count in matches.items():
        previous = last_alert.get(key)
        if previous is not None and latest < previous + cooldowns[key[0]]:
            continue
        last_alert[key] = latest
        alerts.append((key[0], key[1], count))
    return rows, sorted(alerts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="CSV files of the drug_testing feed, replayed in order")
    p.add_argument("--alerts", help="write one line per alert (rule, district, matches) here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    last_alert = {}
    rows = 0
    alerts = []
    for path in args.files:
        n, raised = replay(path, last_alert)
        rows += n
        alerts.extend(raised)
    seconds = time.perf_counter() - started
    if args.alerts:
        with open(args.alerts, "w", encoding="utf-8") as out:
            for rule_id, district, count in alerts:
                out.write(f"{rule_id}\t{district}\t{count}\n")
    print(f"rows={rows} seconds={seconds:.3f} rows_per_s={rows / max(seconds, 1e-9):.0f} alerts={len(alerts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

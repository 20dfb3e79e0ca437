#!/usr/bin/env python3
"""Seeds the fuzz corpora (fuzz/corpus/TARGET/, not committed) from the repository's own data:
the example feed files, the bad-input corpus (tests/corpus/), the shipped rules and the broken
rule files of tests/check_errors/, and the crash regressions of fuzz/regressions/.

libFuzzer keeps what it learns in the same folders, so seeding twice only adds files back.
Usage: python3 fuzz/seeds.py [TARGET...]
"""

import hashlib
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
TARGETS = ["parse_csv", "parse_jsonl", "parse_json", "condition", "rule_file"]
# The feed variants of fuzz/src/lib.rs (FEED_VARIANTS); the first byte of a parse input picks one.
VARIANTS = 4


def files(*parts, ext=None):
    folder = os.path.join(ROOT, *parts)
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path) and (ext is None or name.endswith(ext)):
            with open(path, "rb") as f:
                out.append(f.read())
    return out


def save(target, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def feed_files(exts):
    data = []
    for ext in exts:
        data += files("examples", ext=ext)
        data += files("tests", "corpus", "drug_testing", ext=ext)
    return data


def when_texts(text):
    """Every `when` condition of a rule file, also the ones `check` refuses."""
    found = []
    try:
        doc = tomllib.loads(text)
        for rule in doc.get("rule", []):
            for cond in (rule.get("when"), (rule.get("until") or {}).get("when")):
                if isinstance(cond, str):
                    found.append(cond)
    except tomllib.TOMLDecodeError:
        pass
    # Broken files: take the line as written.
    found += [m.group(1) for m in re.finditer(r"^when\s*=\s*'(.*)'\s*$", text, re.M)]
    return found


def main(targets):
    rule_texts = files("rules", ext=".toml") + files("tests", "check_errors", ext=".toml")
    seeds = {
        "parse_csv": feed_files([".csv", ".txt"]),
        "parse_jsonl": feed_files([".jsonl"]),
        "parse_json": feed_files([".json"]),
        "rule_file": rule_texts,
        "condition": [w.encode() for t in rule_texts for w in when_texts(t.decode("utf-8", "replace"))],
    }
    seeds["condition"] += [
        b'district == "Bolton" and not (substances_major in nitazenes or exists(notes))',
        b'amount_mg_per_unit >= 10 or tested_at < "2025-11-05T00:00:00Z"',
        b'substances_major ~ "(?i)nitaz[ei]ne" and district not in ["Bury", "Wigan"]',
    ]
    for target in targets:
        for data in seeds[target]:
            if target.startswith("parse_"):
                # One copy per feed variant (the first byte picks it).
                for v in range(VARIANTS):
                    save(target, bytes([v]) + data)
            else:
                save(target, data)
        for data in files("fuzz", "regressions", target):
            save(target, data)
        count = len(os.listdir(os.path.join(CORPUS, target))) if os.path.isdir(os.path.join(CORPUS, target)) else 0
        print(f"fuzz/corpus/{target}: {count} inputs")


if __name__ == "__main__":
    main(sys.argv[1:] or TARGETS)

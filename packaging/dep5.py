#!/usr/bin/env python3
"""Write the package's machine-readable copyright file (DEP-5) from cargo-about's JSON.

Usage: dep5.py ABOUT.json LINKED.txt COPYRIGHT_OUT

cargo-about (with packaging/about.toml) has found, for every crate of the build,
the licence it is used under and that licence's text as the crate ships it.
LINKED.txt is `cargo tree -e normal,no-proc-macro` of the release target ("NAME
vVERSION" a line): the crates really linked into the binary. Proc-macro crates and
what only they use (syn, quote...) run in the compiler and are not linked, so they
are left out; a linked crate cargo-about did not cover is an error. This turns that
into Debian's format:

- a header, then `Files: *` for earlywarn itself;
- one `Files: vendor/NAME-VERSION/*` paragraph per linked crate (the layout of
  `cargo vendor --versioned-dirs`), with the copyright lines found in its licence
  texts (or its authors) and its licence;
- one stand-alone `License:` paragraph per licence. A crate whose text differs from
  that paragraph by more than its copyright lines carries its own text inline, so
  every crate's licence text is in the file. Apache-2.0 and MPL-2.0 refer to
  /usr/share/common-licenses, as Debian policy asks (lintian warns otherwise).

Exits non-zero, naming the crate, if a crate has no licence text.
"""

import json
import re
import sys
from collections import Counter, defaultdict

COMMON_LICENSES = {"Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0", "CC0-1.0": "CC0-1.0"}
COPYRIGHT_LINE = re.compile(r"^\s*(copyright\s*(\(c\)|©|\d)|©)", re.IGNORECASE)
PLACEHOLDER = re.compile(r"\[yyyy\]|\[name of copyright owner\]|<year>|<copyright holders>|\{yyyy\}", re.IGNORECASE)

HEADER = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: earlywarn
Upstream-Contact: earlywarn developers <earlywarn@example.org>
Comment: The earlywarn binary links statically the Rust crates below: every crate
 of Cargo.lock that the release build links on Linux (build-only and dev-only
 crates are not in the binary and are not listed). Their paths are those of
 `cargo vendor --versioned-dirs`. This file is generated from the dependency tree
 by cargo-about when the package is built (scripts/package, packaging/dep5.py).

Files: *
Copyright: 2026 earlywarn developers
License: MIT or Apache-2.0
"""

EARLYWARN_LICENSE_TEXT = """\
License: MIT or Apache-2.0
 earlywarn is licensed under either of the Apache License, Version 2.0
 (/usr/share/common-licenses/Apache-2.0) or the MIT licence (the "MIT" paragraph
 of this file, with the copyright notice "Copyright (c) 2026 earlywarn
 developers"), at your option.
"""


def copyright_lines(text):
    lines = []
    for line in text.splitlines():
        if COPYRIGHT_LINE.match(line) and not PLACEHOLDER.search(line):
            lines.append(" ".join(line.split()))
    return lines


def without_copyright(text):
    """The licence's terms alone: copyright lines gone, whitespace normalised."""
    kept = [line for line in text.splitlines() if not COPYRIGHT_LINE.match(line)]
    return " ".join(" ".join(kept).split())


def indented(text):
    """A DEP-5 field body: every line indented one space, empty lines as ' .'."""
    out = []
    lines = text.strip("\n").splitlines()
    # Trailing blank lines carry nothing; blank runs collapse to one ' .'.
    previous_blank = False
    for line in lines:
        line = line.rstrip().replace("\t", "    ")
        if not line.strip():
            if not previous_blank:
                out.append(" .")
            previous_blank = True
        else:
            out.append(" " + line)
            previous_blank = False
    return "\n".join(out)


def dep5_expression(ids):
    return " and ".join(sorted(ids))


def main():
    about_json, linked_txt, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(about_json, encoding="utf-8") as f:
        about = json.load(f)
    linked = set()
    with open(linked_txt, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].startswith("v"):
                linked.add((parts[0], parts[1][1:]))
    linked.discard(("earlywarn", next((v for n, v in linked if n == "earlywarn"), "")))

    # crate key -> {"package": ..., "ids": set, "texts": {id: [text, ...]}}
    crates = {}
    for entry in about.get("crates", []):
        package = entry["package"]
        if package["name"] == "earlywarn":
            continue
        key = (package["name"], package["version"])
        if key not in linked:
            continue
        crates[key] = {"package": package, "ids": set(), "texts": defaultdict(list)}

    uncovered = sorted(f"{n} {v}" for n, v in linked - crates.keys())
    if uncovered:
        sys.exit("dep5: linked but not in cargo-about's output: " + ", ".join(uncovered))

    for licence in about.get("licenses", []):
        for used in licence.get("used_by", []):
            package = used["crate"]
            key = (package["name"], package["version"])
            if key not in crates:
                continue
            crates[key]["ids"].add(licence["id"])
            crates[key]["texts"][licence["id"]].append(licence["text"])

    missing = [f"{n} {v}" for (n, v), c in crates.items() if not c["ids"]]
    if missing:
        sys.exit("dep5: no licence text found for: " + ", ".join(sorted(missing)))

    # The stand-alone text of each licence: its most common wording.
    wording = defaultdict(Counter)
    sample = {}
    for crate in crates.values():
        for licence_id, texts in crate["texts"].items():
            for text in texts:
                terms = without_copyright(text)
                wording[licence_id][terms] += 1
                sample.setdefault((licence_id, terms), text)
    standard = {lid: counts.most_common(1)[0][0] for lid, counts in wording.items()}

    paragraphs = [HEADER]
    for (name, version), crate in sorted(crates.items()):
        package = crate["package"]
        holders = []
        for texts in crate["texts"].values():
            for text in texts:
                for line in copyright_lines(text):
                    if line not in holders:
                        holders.append(line)
        if not holders:
            authors = [a for a in package.get("authors") or [] if a.strip()]
            holders = authors or [f"the {name} developers"]
        paragraph = [f"Files: vendor/{name}-{version}/*"]
        paragraph.append("Copyright: " + "\n ".join(holders))
        own_texts = []
        for licence_id, texts in sorted(crate["texts"].items()):
            if licence_id in COMMON_LICENSES:
                continue
            for text in texts:
                if without_copyright(text) != standard[licence_id] and text not in own_texts:
                    own_texts.append(text)
        paragraph.append("License: " + dep5_expression(crate["ids"]))
        if own_texts:
            # This crate's wording differs from the stand-alone paragraph: carry it here.
            paragraph.append(indented("\n\n".join(own_texts)))
        if package.get("license"):
            paragraph.append(f"Comment: Cargo.toml says license = \"{package['license']}\".")
        paragraphs.append("\n".join(paragraph) + "\n")

    # rusqlite's `bundled` feature compiles the SQLite amalgamation that
    # libsqlite3-sys ships into the binary; SQLite is in the public domain, which
    # no SPDX id (and so no cargo-about entry) says.
    for name, version in sorted(crates):
        if name == "libsqlite3-sys":
            paragraphs.append(
                f"Files: vendor/libsqlite3-sys-{version}/sqlite3/*\n"
                "Copyright: D. Richard Hipp and the SQLite developers (public domain)\n"
                "License: public-domain\n"
                " The author disclaims copyright to this source code. In place of a legal\n"
                " notice, here is a blessing:\n"
                " .\n"
                "    May you do good and not evil.\n"
                "    May you find forgiveness for yourself and forgive others.\n"
                "    May you share freely, never taking more than you give.\n"
            )

    paragraphs.append(EARLYWARN_LICENSE_TEXT)
    used_ids = sorted({lid for c in crates.values() for lid in c["ids"]} | {"MIT"})
    for licence_id in used_ids:
        if licence_id in COMMON_LICENSES:
            body = (
                f" On Debian systems, the complete text of the {licence_id} licence can be\n"
                f" found in /usr/share/common-licenses/{COMMON_LICENSES[licence_id]}."
            )
        elif licence_id in standard:
            text = sample[(licence_id, standard[licence_id])]
            kept = "\n".join(line for line in text.splitlines() if not COPYRIGHT_LINE.match(line))
            body = indented(kept)
        else:
            sys.exit(f"dep5: no text for licence {licence_id}")
        paragraphs.append(f"License: {licence_id}\n{body}\n")

    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(paragraphs))
    print(f"dep5: {len(crates)} crates, licences: {', '.join(used_ids)}", file=sys.stderr)


if __name__ == "__main__":
    main()

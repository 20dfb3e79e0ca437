#!/usr/bin/env python3
"""Writes the bad-input corpus of tests/bad_input.rs into tests/corpus/drug_testing/.

Each file is a drug-testing export (SPEC section 3.1 columns) as real producers get them
wrong: encodings, line ends, delimiters, quotes, columns, JSON shapes, binary files, names.
Sample ids say which file a row came from and what should happen to it:

    <FILE>-N    a good row with no nitazene       (processed, no alert)
    <FILE>-NZn  a good row with a nitazene        (processed, alerts)
    <FILE>-BADn a bad row                         (quarantined in rejected/, never alerts,
                                                   even when it holds a nitazene)

Files too big to commit (the 10 MB line, the oversized file), the symbolic link and names
git cannot carry (not UTF-8) are made by the test at run time.

Deterministic: running it twice writes the same bytes. Run from anywhere:
    python3 tests/corpus/make.py
"""

import io
import json
import os
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "drug_testing")

COLUMNS = [
    "sample_id", "received_at", "tested_at", "lab", "source", "district",
    "postcode_district", "purchased_as", "form", "colour", "marking",
    "substances_major", "substances_minor", "amount_mg_per_unit", "linked_harm", "notes",
]
HEADER = ",".join(COLUMNS)


def record(sample_id, district="Bolton", major="heroin", minor="caffeine", notes="",
           tested_at="2025-11-04T09:12:00Z", purchased_as="heroin", amount="",
           harm="none", source="drug_service", form="powder", colour="brown", marking=""):
    postcode = {"Bolton": "BL1", "Salford": "M6", "Manchester": "M4", "Wigan": "WN1",
                "Oldham": "OL1", "Rochdale": "OL16", "Stockport": "SK1", "Bury": "BL9",
                "Tameside": "OL6", "Trafford": "M32"}.get(district, "M1")
    return {
        "sample_id": sample_id, "received_at": "2025-11-03T16:05:00Z", "tested_at": tested_at,
        "lab": "MANDRAKE", "source": source, "district": district, "postcode_district": postcode,
        "purchased_as": purchased_as, "form": form, "colour": colour, "marking": marking,
        "substances_major": major, "substances_minor": minor, "amount_mg_per_unit": amount,
        "linked_harm": harm, "notes": notes,
    }


def field(value, delimiter=","):
    value = str(value)
    if any(c in value for c in (delimiter, '"', "\n", "\r")):
        return '"' + value.replace('"', '""') + '"'
    return value


def line(rec, delimiter=","):
    return delimiter.join(field(rec[c], delimiter) for c in COLUMNS)


def csv_text(records, delimiter=",", eol="\n"):
    rows = [delimiter.join(COLUMNS)] + [line(r, delimiter) for r in records]
    return eol.join(rows) + eol


def write(name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))

    # 1. UTF-8 with a BOM and CRLF, as Excel saves "CSV UTF-8".
    write("utf8-bom.csv", b"\xef\xbb\xbf" + csv_text([
        record("BOM-NZ1", "Bolton", "heroin;protonitazene", "paracetamol",
               "naïve user – two naloxone doses", harm="non_fatal_overdose"),
        record("BOM-1", "Bolton", "ketamine", "", "Expected result."),
    ], eol="\r\n").encode("utf-8"))

    # 2. Windows-1252, as Excel saves plain "CSV" on a UK desktop: é, £, – and “quotes”.
    write("windows-1252.csv", csv_text([
        record("W1252-NZ1", "Salford", "N-Desethylisotonitazene", "caffeine",
               "sold for £10 near the café – “strong” batch", purchased_as="heroin"),
        record("W1252-1", "Salford", "cocaine", "levamisole", "café latte colour"),
    ], eol="\r\n").encode("cp1252"))

    # 3. UTF-16LE with a BOM, tab-separated: Excel's "Unicode Text" export (.txt).
    write("excel-unicode-text.txt", b"\xff\xfe" + csv_text([
        record("U16-NZ1", "Oldham", "metonitazene", "", "Ünïcödé notes, with a comma"),
        record("U16-1", "Oldham", "MDMA", "", "pressed pill"),
    ], delimiter="\t", eol="\r\n").encode("utf-16-le"))

    # 4. CR-only line ends (classic Mac), one good nitazene row and one bad time.
    write("cr-only.csv", csv_text([
        record("CR-NZ1", "Wigan", "isotonitazene", "", "old Mac export"),
        record("CR-BAD1", "Wigan", "isotonitazene", "", "bad time", tested_at="04/11/2025 09:12"),
        record("CR-1", "Wigan", "heroin", "", ""),
    ], eol="\r"))

    # 5. Quoted fields holding newlines (CRLF and LF), then a bad row: its line number must
    #    count the lines inside the quotes.
    write("quoted-newlines.csv", csv_text([
        record("QNL-NZ1", "Manchester", "heroin;protonitazene", "",
               "Handed in after an overdose.\r\nTwo doses of naloxone.\r\nRecovered."),
        record("QNL-1", "Manchester", "cocaine", "", "line one\nline two\nline three"),
        record("QNL-BAD1", "Manchester", "heroin", "", "bad time", tested_at="yesterday"),
        record("QNL-NZ2", "Manchester", "metonitazene", "", "after the bad row"),
    ], eol="\r\n"))

    # 6. An unterminated quote in a middle column: everything after it is one field up to
    #    the end of the file, so the row (and the rows it swallowed) is quarantined.
    good = line(record("UQ-NZ1", "Rochdale", "protonitazene", "", "before the quote"))
    bad = line(record("UQ-BAD1", "Rochdale", "isotonitazene", "", "broken",
                      purchased_as="PLACEHOLDER"))
    bad = bad.replace("PLACEHOLDER", '"heroin 10 bag')
    after = line(record("UQ-BAD2", "Rochdale", "metonitazene", "", "swallowed by the quote"))
    write("unterminated-quote.csv", "\n".join([HEADER, good, bad, after]) + "\n")

    # 7. An unterminated quote in the LAST column (notes): the rows after it are swallowed
    #    into one note unless the parser notices the quote never closed.
    good = line(record("UQL-NZ1", "Stockport", "protonitazene", "", "before the quote"))
    bad = line(record("UQL-BAD1", "Stockport", "heroin", "", "NOTES"))
    bad = bad.replace("NOTES", '"said it was strong, then')
    after1 = line(record("UQL-BAD2", "Stockport", "isotonitazene", "", "swallowed one"))
    after2 = line(record("UQL-BAD3", "Stockport", "metonitazene", "", "swallowed two"))
    write("unterminated-quote-last-column.csv",
          "\n".join([HEADER, good, bad, after1, after2]) + "\n")

    # 8. A semicolon-separated export (European Excel): decimal commas, lists quoted.
    write("semicolon.csv", csv_text([
        record("SEMI-NZ1", "Tameside", "heroin;isotonitazene", "caffeine", "semicolon export",
               amount="12,5"),
        record("SEMI-1", "Tameside", "cocaine", "", "", amount="0,4"),
    ], delimiter=";"))

    # 8b. The same from a European Excel: semicolons and Windows-1252.
    write("semicolon-windows-1252.csv", csv_text([
        record("SEMI1252-NZ1", "Trafford", "protonitazene", "", "vendu au café – 12,5 mg",
               amount="12,5"),
        record("SEMI1252-1", "Trafford", "cocaine", "", "déjà vu"),
    ], delimiter=";", eol="\r\n").encode("cp1252"))

    # 9. A row with extra columns and one with missing columns among good rows.
    extra = line(record("COL-BAD1", "Bury", "protonitazene", "", "extra")) + ",surplus,cells"
    missing = ",".join(line(record("COL-BAD2", "Bury", "protonitazene", "", "x")).split(",")[:13])
    write("extra-and-missing-columns.csv", "\n".join([
        HEADER,
        line(record("COL-NZ1", "Bury", "protonitazene", "", "good before")),
        extra,
        line(record("COL-1", "Bury", "cocaine", "", "")),
        missing,
        line(record("COL-NZ2", "Bury", "metonitazene", "", "good after")),
    ]) + "\n")

    # 10. An empty file.
    write("empty.csv", b"")

    # 11. A binary file: the Excel workbook itself instead of its CSV export.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in [
            ("[Content_Types].xml", '<?xml version="1.0"?><Types/>'),
            ("xl/workbook.xml", '<?xml version="1.0"?><workbook/>'),
            ("xl/worksheets/sheet1.xml", "<sheetData>" + "".join(
                f"<row><c><v>{c}</v></c></row>" for c in COLUMNS) + "</sheetData>"),
        ]:
            info = zipfile.ZipInfo(name, date_time=(2025, 11, 4, 9, 0, 0))
            z.writestr(info, body)
    write("results.xlsx", buf.getvalue())

    # 12. JSON lines with broken lines among good ones.
    good1 = {**record("JL-NZ1", "Trafford", "heroin;protonitazene", "", "good line")}
    good2 = {**record("JL-1", "Trafford", "cocaine", "", "")}
    good3 = {**record("JL-NZ2", "Trafford", "metonitazene", "", "after the bad lines")}
    bad_lines = [
        # Cut off mid-line (a partial write).
        json.dumps(record("JL-BAD1", "Trafford", "isotonitazene"))[:70],
        # Python's repr, not JSON.
        repr(record("JL-BAD2", "Trafford", "isotonitazene")),
        # A trailing comma.
        json.dumps(record("JL-BAD3", "Trafford", "isotonitazene"))[:-1] + ', }',
        # An array, not an object.
        json.dumps(["JL-BAD4", "Trafford", "isotonitazene"]),
        # No sample id.
        json.dumps({**record("", "Trafford", "isotonitazene"), "notes": "JL-BAD5"}),
    ]
    write("bad-lines.jsonl", "\n".join(
        [json.dumps(good1), bad_lines[0], bad_lines[1], json.dumps(good2), "",
         bad_lines[2], bad_lines[3], bad_lines[4], json.dumps(good3)]) + "\n")

    # 13. A JSON document that is not an array of objects: an API's wrapper object.
    write("wrapped-object.json", json.dumps({
        "exported_at": "2025-11-04T12:00:00Z",
        "samples": [record("JW-BAD1", "Bolton", "protonitazene")],
    }, indent=2) + "\n")

    # 14. A JSON array with some elements that are not records.
    write("mixed-array.json", json.dumps([
        record("JA-NZ1", "Salford", "heroin;isotonitazene", "", "good element"),
        "JA-BAD1 isotonitazene",
        None,
        [record("JA-BAD2", "Salford", "isotonitazene")],
        record("JA-1", "Salford", "cocaine"),
    ], indent=1) + "\n")

    # 15. A name with spaces and non-ASCII characters, with one bad row.
    write("résultats 4 nov.csv", csv_text([
        record("FR-NZ1", "Bolton", "protonitazene", "", "fichier de résultats"),
        record("FR-BAD1", "Bolton", "protonitazene", "", "date", tested_at="4 nov. 2025 09:12"),
    ]))

    # 16. Wrong column names: the header a person typed ("Sample ID", ...).
    write("renamed-columns.csv", "Sample ID,Tested,District,Substances\n"
          "RN-BAD1,2025-11-04T09:12:00Z,Bolton,protonitazene\n")

    # 17. Times as a UK desktop writes them, on a feed that expects RFC 3339.
    write("uk-dates.csv", csv_text([
        record("UK-BAD1", "Oldham", "protonitazene", "", "", tested_at="04/11/2025 09:12"),
        record("UK-NZ1", "Oldham", "protonitazene", "", "RFC 3339 row"),
    ]))

    # 18. UTF-16LE without a byte-order mark: text, but NUL in every other byte.
    write("utf16-no-bom.csv", csv_text([
        record("U16N-BAD1", "Bolton", "protonitazene"),
    ]).encode("utf-16-le"))

    # 19. Only the header.
    write("header-only.csv", HEADER + "\n")

    # 20. Blank lines, spaces around values and a trailing line without a line end.
    text = csv_text([
        record("WS-NZ1", "Salford", "protonitazene", "", "spaces"),
    ]).replace("WS-NZ1", "  WS-NZ1 ").replace("Salford", " Salford")
    write("blank-lines.csv", "\n\n" + text + "\n\n" +
          line(record("WS-1", "Salford", "cocaine", "", "no final line end")))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Turn a generated drug_testing CSV (bench/gen_drug_testing.py) into an xlsx workbook.

    python3 bench/gen_xlsx.py IN.csv OUT.xlsx

One sheet, `Results`, as a lab's export would have it: a header row, then one
row per sample. `received_at` and `tested_at` become date cells (the UTC times
of the CSV as local times in Europe/London, the benchmark config's
daemon.timezone, so the events keep their instants); `amount_mg_per_unit`
becomes a number cell; every other value stays text. Written with openpyxl's
write-only mode (streamed, constant memory). The same CSV always gives the
same cells.
"""

import csv
import datetime
import sys
import zoneinfo

import openpyxl
from openpyxl.cell import WriteOnlyCell

LONDON = zoneinfo.ZoneInfo("Europe/London")
DATES = {"received_at", "tested_at"}
NUMBERS = {"amount_mg_per_unit"}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out = sys.argv[1], sys.argv[2]
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("Results")
    with open(source, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows)
        sheet.append(header)
        kinds = ["date" if h in DATES else "number" if h in NUMBERS else "text" for h in header]
        for row in rows:
            cells = []
            for kind, value in zip(kinds, row):
                if value == "":
                    cells.append(None)
                elif kind == "date":
                    t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
                    cell = WriteOnlyCell(sheet, t.astimezone(LONDON).replace(tzinfo=None))
                    cell.number_format = "yyyy-mm-dd hh:mm:ss"
                    cells.append(cell)
                elif kind == "number":
                    try:
                        cells.append(float(value) if "." in value else int(value))
                    except ValueError:
                        cells.append(value)
                else:
                    cells.append(value)
            sheet.append(cells)
    book.save(out)


if __name__ == "__main__":
    main()

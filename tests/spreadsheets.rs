//! Workbooks as labs send them (SPEC §4: `xlsx` and `ods`), made by real
//! spreadsheet libraries and dropped into the real daemon (file transport):
//! rust_xlsxwriter (a 1900-system xlsx with a cached formula), openpyxl (a
//! 1904-system xlsx) and odfpy (an ods). Each holds the same rows: a header
//! under an empty first row, dates in the time field, a text id with a
//! leading zero and a numeric id, a district merged over two rows, an empty
//! row, a bad date and nitazene rows. The daemon must raise the right alert
//! with the right times in `daemon.timezone`, and set the bad row aside in
//! `rejected/` as CSV with its sheet row number and column letter.
//!
//! openpyxl and odfpy come from PyPI (`scripts/test` installs them).
//! Run with `cargo test --test spreadsheets`.

mod e2e_support;
mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use e2e_support::*;
use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};
use support::write_atomically;

/// The feed reads the `Results` sheet: each workbook has a `Summary` sheet first.
fn sheet_cfg() -> Cfg {
    Cfg {
        feed_extra: "sheet = \"Results\"\n".into(),
        ..Cfg::default()
    }
}

const COLUMNS: [&str; 6] = [
    "sample_id",
    "tested_at",
    "district",
    "substances_major",
    "amount_mg_per_unit",
    "notes",
];

/// The 1900-system workbook, by rust_xlsxwriter: formulas carry their result.
fn xlsx_1900() -> Vec<u8> {
    let mut book = Workbook::new();
    let summary = book.add_worksheet();
    summary.set_name("Summary").unwrap();
    summary.write_string(0, 0, "see Results").unwrap();
    let ws = book.add_worksheet();
    ws.set_name("Results").unwrap();
    let date = Format::new().set_num_format("yyyy-mm-dd hh:mm");
    let at = |d: u8, h: u16, m: u8| {
        ExcelDateTime::from_ymd(2025, 7, d)
            .unwrap()
            .and_hms(h, m, 0)
            .unwrap()
    };
    // Row 1 (index 0) is left empty: the header is the first non-empty row.
    for (c, name) in COLUMNS.iter().enumerate() {
        ws.write_string(1, c as u16, *name).unwrap();
    }
    ws.write_string(2, 0, "0100").unwrap();
    ws.write_datetime_with_format(2, 1, at(4, 11, 30), &date)
        .unwrap();
    ws.merge_range(2, 2, 3, 2, "Bolton", &Format::new())
        .unwrap();
    ws.write_string(2, 3, "protonitazene").unwrap();
    ws.write_number(2, 4, 10).unwrap();
    ws.write_string(2, 5, "first").unwrap();

    ws.write_number(3, 0, 4521).unwrap();
    ws.write_datetime_with_format(3, 1, at(4, 12, 45), &date)
        .unwrap();
    ws.write_string(3, 3, "protonitazene").unwrap();
    ws.write_formula(3, 4, Formula::new("=E3*2").set_result("20"))
        .unwrap();
    ws.write_string(3, 5, "second").unwrap();
    // Row 5 (index 4) is empty.
    ws.write_string(5, 0, "0102").unwrap();
    ws.write_datetime_with_format(5, 1, at(5, 9, 0), &date)
        .unwrap();
    ws.write_string(5, 2, "Bury").unwrap();
    ws.write_string(5, 3, "cocaine").unwrap();
    ws.write_number(5, 4, 5).unwrap();

    ws.write_string(6, 0, "0103").unwrap();
    ws.write_string(6, 1, "yesterday").unwrap();
    ws.write_string(6, 2, "Bury").unwrap();
    ws.write_string(6, 3, "isotonitazene").unwrap();
    ws.write_number(6, 4, 5).unwrap();
    ws.write_string(6, 5, "bad").unwrap();
    book.save_to_buffer().unwrap()
}

/// Runs a Python script that writes a workbook to the path it is given.
fn python_workbook(script: &str, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    let run = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .output()
        .expect("run python3");
    assert!(
        run.status.success(),
        "python3 could not make {name} (scripts/test installs openpyxl and odfpy):\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    fs::read(&out).unwrap()
}

/// The 1904-system workbook, by openpyxl. openpyxl saves no formula results,
/// so E4 holds the number a spreadsheet would have saved.
const OPENPYXL_1904: &str = r#"
import sys, datetime, openpyxl
from openpyxl.utils.datetime import CALENDAR_MAC_1904
wb = openpyxl.Workbook()
wb.epoch = CALENDAR_MAC_1904
wb.active.title = "Summary"
wb.active["A1"] = "see Results"
ws = wb.create_sheet("Results")
for c, name in enumerate(["sample_id", "tested_at", "district", "substances_major", "amount_mg_per_unit", "notes"], 1):
    ws.cell(row=2, column=c, value=name)
rows = {
    3: ["0100", datetime.datetime(2025, 7, 4, 11, 30), "Bolton", "protonitazene", 10, "first"],
    4: [4521, datetime.datetime(2025, 7, 4, 12, 45), None, "protonitazene", 20, "second"],
    6: ["0102", datetime.datetime(2025, 7, 5, 9, 0), "Bury", "cocaine", 5, None],
    7: ["0103", "yesterday", "Bury", "isotonitazene", 5, "bad"],
}
for r, values in rows.items():
    for c, v in enumerate(values, 1):
        if v is not None:
            cell = ws.cell(row=r, column=c, value=v)
            if isinstance(v, datetime.datetime):
                cell.number_format = "yyyy-mm-dd hh:mm"
ws.merge_cells("C3:C4")
wb.save(sys.argv[1])
"#;

/// The same rows as an OpenDocument spreadsheet, by odfpy, with the formula
/// and its saved value as LibreOffice writes them.
const ODFPY_ODS: &str = r#"
import sys
from odf.opendocument import OpenDocumentSpreadsheet
from odf.table import Table, TableRow, TableCell, CoveredTableCell
from odf.text import P
doc = OpenDocumentSpreadsheet()
def text(v, **kw):
    c = TableCell(valuetype="string", **kw); c.addElement(P(text=v)); return c
def num(v, **kw):
    c = TableCell(valuetype="float", value=v, **kw); c.addElement(P(text=str(v))); return c
def date(v):
    c = TableCell(valuetype="date", datevalue=v); c.addElement(P(text=v)); return c
def row(table, cells):
    r = TableRow()
    for c in cells:
        r.addElement(c)
    table.addElement(r)
summary = Table(name="Summary")
row(summary, [text("see Results")])
doc.spreadsheet.addElement(summary)
t = Table(name="Results")
row(t, [TableCell()])
row(t, [text(n) for n in ["sample_id", "tested_at", "district", "substances_major", "amount_mg_per_unit", "notes"]])
row(t, [text("0100"), date("2025-07-04T11:30:00"), text("Bolton", numberrowsspanned=2), text("protonitazene"), num(10), text("first")])
row(t, [num(4521), date("2025-07-04T12:45:00"), CoveredTableCell(), text("protonitazene"), num(20, formula="of:=[.E3]*2"), text("second")])
row(t, [TableCell()])
row(t, [text("0102"), date("2025-07-05T09:00:00"), text("Bury"), text("cocaine"), num(5)])
row(t, [text("0103"), text("yesterday"), text("Bury"), text("isotonitazene"), num(5), text("bad")])
doc.spreadsheet.addElement(t)
doc.save(sys.argv[1])
"#;

/// Drops `bytes` as `name` and checks what the daemon made of it.
fn check_workbook(name: &str, bytes: &[u8]) {
    let dir = tempdir();
    let config = sheet_cfg().write(dir.path());
    let mut daemon = start_daemon(&config);
    write_atomically(&feed_dir(dir.path()), name, bytes);

    let line = wait_log(&mut daemon, &["File processed", name], WAIT);
    // Rows 3, 4, 6 and 7: the empty rows 1 and 5 are not records.
    assert_eq!(field(&line, "rows").as_deref(), Some("4"), "{line}");
    assert_eq!(field(&line, "rejected").as_deref(), Some("1"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let alerts = log_lines(&daemon, &["Alert raised"]);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    // Both Bolton rows: the merged district filled row 4.
    assert_eq!(
        field(&alerts[0], "events").as_deref(),
        Some("2"),
        "{}",
        alerts[0]
    );
    assert_eq!(
        field(&alerts[0], "district").as_deref(),
        Some("Bolton"),
        "{}",
        alerts[0]
    );

    let mails = wait_eml(&dir.path().join("mail"), 1, WAIT);
    let text = mails[0].text_body().unwrap().replace("\r\n", "\n");
    // Ids as written: the text id keeps its zero, the numeric one has no `.0`;
    // each record's title is its id and its time.
    assert!(text.contains("0100, tested "), "{text}");
    assert!(text.contains("4521, tested "), "{text}");
    assert!(!text.contains("4521.0"), "{text}");
    // The merged district in both records; the formula as its saved value.
    assert_eq!(text.matches("   District: Bolton\n").count(), 2, "{text}");
    assert!(text.contains("Amount mg per unit: 10\n"), "{text}");
    assert!(text.contains("Amount mg per unit: 20\n"), "{text}");
    // Times in daemon.timezone (Europe/London, summer time), whatever the date
    // system: a date cell read with the zone's offset shows its own wall time.
    assert!(text.contains("Fri 4 Jul 2025 11:30 BST"), "{text}");
    assert!(text.contains("Fri 4 Jul 2025 12:45 BST"), "{text}");
    assert!(
        !text.contains("2025-07-04T"),
        "no ISO times in the email:\n{text}"
    );
    assert!(
        !text.contains("0103"),
        "the bad row raised nothing:\n{text}"
    );

    let rejected = feed_dir(dir.path()).join("rejected");
    let base = Path::new(name)
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let errors = fs::read_to_string(rejected.join(format!("{name}.errors.txt")))
        .or_else(|_| fs::read_to_string(rejected.join(format!("{base}.errors.txt"))))
        .unwrap_or_else(|e| {
            panic!(
                "no errors file in rejected/ ({e}): {:?}",
                names_in(&rejected)
            )
        });
    assert!(
        errors.contains("row 7: column B (`tested_at`): value `yesterday` is not a time"),
        "{errors}"
    );
    assert!(
        errors.contains("as CSV"),
        "the errors file says the rows are CSV:\n{errors}"
    );
    let rows = fs::read_to_string(rejected.join(format!("{name}.rows.csv")))
        .or_else(|_| fs::read_to_string(rejected.join(format!("{base}.rows.csv"))))
        .unwrap();
    assert_eq!(
        rows,
        "sample_id,tested_at,district,substances_major,amount_mg_per_unit,notes\n0103,yesterday,Bury,isotonitazene,5,bad\n"
    );
    assert!(feed_dir(dir.path()).join("processed").join(name).exists());
    stop_daemon(daemon);
}

#[test]
fn an_xlsx_in_the_1900_date_system_raises_the_right_alert_at_the_right_times() {
    check_workbook("results.xlsx", &xlsx_1900());
}

#[test]
fn an_xlsx_in_the_1904_date_system_gives_the_same_times() {
    let dir = tempdir();
    let bytes = python_workbook(OPENPYXL_1904, dir.path(), "mac.xlsx");
    check_workbook("mac.xlsx", &bytes);
}

#[test]
fn an_ods_gives_the_same_alert() {
    let dir = tempdir();
    let bytes = python_workbook(ODFPY_ODS, dir.path(), "results.ods");
    check_workbook("results.ods", &bytes);
}

#[test]
fn a_missing_sheet_rejects_the_file_naming_the_sheets_it_has() {
    let dir = tempdir();
    let config = Cfg {
        feed_extra: "sheet = \"Lab results\"\n".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    write_atomically(&feed_dir(dir.path()), "results.xlsx", xlsx_1900());
    let line = wait_log(&mut daemon, &["Rejected file", "results.xlsx"], WAIT);
    assert!(
        line.contains("no sheet `Lab results`") && line.contains("`Summary`, `Results`"),
        "{line}"
    );
    assert!(feed_dir(dir.path()).join("rejected/results.xlsx").exists());
    assert!(eml_messages(&dir.path().join("mail")).is_empty());
    stop_daemon(daemon);
}

#[test]
fn replay_reads_a_workbook_like_the_daemon() {
    let dir = tempdir();
    let config = sheet_cfg().write(dir.path());
    let file = dir.path().join("results.xlsx");
    fs::write(&file, xlsx_1900()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_earlywarn"))
        .args(["replay", "--config"])
        .arg(&config)
        .args(["--feed", "drug_testing"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 1: a row was rejected (as for any file replay reads).
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("nitazene-detected"), "{stdout}\n{stderr}");
    assert!(stdout.contains("Bolton  records=2"), "{stdout}\n{stderr}");
    assert!(stderr.contains("4 rows (3 events"), "{stderr}");
    assert!(
        stderr.contains("row 7: column B (`tested_at`)"),
        "the bad row is reported:\n{stderr}"
    );
}

/// openpyxl saves formulas without their values, and error values as errors.
const OPENPYXL_BAD_CELLS: &str = r##"
import sys, datetime, openpyxl
wb = openpyxl.Workbook()
wb.active.title = "Summary"
ws = wb.create_sheet("Results")
ws.append(["sample_id", "tested_at", "district", "substances_major", "amount_mg_per_unit"])
ws.append(["0200", datetime.datetime(2025, 7, 4, 11, 30), "Wigan", "protonitazene", 3])
ws.append(["0201", datetime.datetime(2025, 7, 4, 11, 40), "Wigan", "protonitazene", "=E2*2"])
ws.append(["0202", datetime.datetime(2025, 7, 4, 11, 50), "Wigan", "protonitazene", "#DIV/0!"])
wb.save(sys.argv[1])
"##;

#[test]
fn a_formula_without_a_saved_value_or_an_error_value_is_a_bad_cell_not_a_blank() {
    let dir = tempdir();
    let bytes = python_workbook(OPENPYXL_BAD_CELLS, dir.path(), "bad.xlsx");
    let config = sheet_cfg().write(dir.path());
    let mut daemon = start_daemon(&config);
    write_atomically(&feed_dir(dir.path()), "bad.xlsx", &bytes);
    let line = wait_log(&mut daemon, &["File processed", "bad.xlsx"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("3"), "{line}");
    assert_eq!(field(&line, "rejected").as_deref(), Some("2"), "{line}");
    let alerts = wait_log(&mut daemon, &["Alert raised"], WAIT);
    assert_eq!(field(&alerts, "events").as_deref(), Some("1"), "{alerts}");
    let errors = fs::read_to_string(feed_dir(dir.path()).join("rejected/bad.xlsx.errors.txt"))
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}",
                names_in(&feed_dir(dir.path()).join("rejected"))
            )
        });
    assert!(
        errors.contains(
            "row 3: column E (`amount_mg_per_unit`): the formula `=E2*2` has no saved value"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("row 4: column E (`amount_mg_per_unit`): the cell holds the error #DIV/0!"),
        "{errors}"
    );
    stop_daemon(daemon);
}

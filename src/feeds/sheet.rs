//! Workbooks (`xlsx`, `ods`) → records, as the same [`Row`]s as a CSV file.
//!
//! Pure: takes the file's bytes (read through the caller's reader, which
//! meters and bounds them) and does no other I/O. calamine reads the workbook;
//! this module chooses the sheet (the feed's `sheet`, else the first), takes
//! the first non-empty row as the header, fills merged ranges with their
//! top-left value, and turns each later row into an event:
//!
//! - a date cell becomes a time in `daemon.timezone` (both the 1900 and the
//!   1904 date systems; Excel's 1900-02-29, which never was, is a bad cell);
//!   in the time field it is the event time, elsewhere RFC 3339 text with the
//!   zone's offset. A text cell in the time field is parsed as in CSV
//!   (`time_format`, else RFC 3339);
//! - a text cell stays text (`0100` stays `0100`); a number prints as its
//!   shortest decimal, whole numbers without `.0` (`100`, not `100.0`);
//! - a formula is its saved (cached) value; one with no saved value, or an
//!   error value (`#DIV/0!`), is a bad cell: nothing is silently blank;
//! - rows with no values are skipped; a bad row is reported with the sheet's
//!   row number and each bad cell's column letter and name.
//!
//! **Memory is bounded before calamine expands anything**: `max_file_bytes`
//! bounds the file, but a zip can expand a thousandfold. The archive's
//! declared unpacked size is refused past [`MAX_UNPACKED_BYTES`] (sound: the
//! zip crate fails an entry that inflates past its declared size); a sheet
//! whose declared dimensions or whose cells (counted as they stream in, so a
//! lying `<dimension>` does not help) exceed [`MAX_CELLS`] is refused, as are
//! merged ranges that would fill more. calamine's ODS reader loads every sheet
//! at open with its own cap (100 million cells). calamine does not expose ODS
//! merged ranges, so they are read here from `content.xml` (streamed, the
//! spans of the chosen sheet's cells only).

use crate::config::FeedFormat;
use crate::event::{FeedName, FieldName, Schema, trim};
use crate::feeds::parse::{
    FileError, RawValue, RecordShape, Row, RowError, build_event_timed, parse_time, too_far_ahead,
};
use calamine::{Data, ExcelDateTime, Ods, Reader, Xlsx};
use jiff::Timestamp;
use jiff::civil;
use std::collections::HashSet;
use std::io::{Cursor, Read};

/// The most cells a sheet may hold (declared, read, or filled by merged
/// ranges): 10 million, about 600,000 rows of 16 columns. Held in memory as
/// calamine values (32 bytes each, plus text), that is a few hundred MiB at
/// most. Excel's own limit is 1,048,576 rows × 16,384 columns, far more than
/// any lab export; a file past this bound is split, not half read.
pub const MAX_CELLS: u64 = 10_000_000;

/// The most a workbook may unpack to, as its zip directory declares: 1 GiB.
/// A 100,000-row sheet is about 30 MiB of XML.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// One cell as read: its value, or a formula whose value was never saved.
#[derive(Debug, Clone)]
enum Cell {
    Value(Data),
    UncachedFormula(String),
}

/// A sheet read whole, before its rows become events.
pub struct Sheet {
    /// The sheet's name, for messages.
    name: String,
    /// Used cells, 0-based `(row, column)`, sorted, merged ranges filled.
    cells: Vec<((u32, u32), Cell)>,
    /// Where the data rows start in `cells` (just past the header row).
    first_data: usize,
    /// The header: `(column, name)` for each named column, in column order.
    columns: Vec<(u32, String)>,
}

/// Reads the workbook in `bytes` (the whole file) and picks its sheet.
pub fn read<R: Read>(mut bytes: R, shape: &RecordShape<'_>) -> Result<Sheet, FileError> {
    let limit = shape.feed.max_file_bytes;
    let mut data = Vec::new();
    (&mut bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| FileError(format!("cannot read the file: {e}")))?;
    if data.len() as u64 > limit {
        return Err(FileError(format!(
            "it is larger than the feed's limit of {limit} bytes (max_file_bytes); split it into smaller files"
        )));
    }
    from_bytes(data, shape.feed.format, shape.feed.sheet.as_deref())
}

/// [`read`] on bytes already in memory.
fn from_bytes(data: Vec<u8>, format: FeedFormat, wanted: Option<&str>) -> Result<Sheet, FileError> {
    if data.is_empty() {
        return Err(FileError("the file is empty".into()));
    }
    check_unpacked_size(&data, format)?;
    let cannot = |e: &dyn std::fmt::Display| {
        FileError(format!("cannot read the file as an {format} workbook: {e}"))
    };
    let (name, cells) = match format {
        FeedFormat::Ods => {
            let mut book = Ods::new(Cursor::new(&data[..])).map_err(|e| cannot(&e))?;
            let name = pick_sheet(&book.sheet_names(), wanted)?;
            let merged = ods_merged(&data, &name).map_err(|e| cannot(&e))?;
            let range = book.worksheet_range(&name).map_err(|e| cannot(&e))?;
            let (height, width) = range.get_size();
            check_cells(&name, height as u64 * width as u64, "has")?;
            let (top, left) = range.start().unwrap_or((0, 0));
            let cells = range
                .used_cells()
                .map(|(r, c, v)| ((top + r as u32, left + c as u32), Cell::Value(v.clone())))
                .collect();
            let mut cells = cells;
            fill_merged(&name, &mut cells, &merged)?;
            (name, cells)
        }
        _ => {
            let mut book = Xlsx::new(Cursor::new(data)).map_err(|e| cannot(&e))?;
            let name = pick_sheet(&book.sheet_names(), wanted)?;
            let merged = book
                .merge_cells_by_sheet_name(&name)
                .map_err(|e| cannot(&e))?;
            let mut cells = Vec::new();
            {
                let mut reader = book.worksheet_cells_reader(&name).map_err(|e| cannot(&e))?;
                let declared = reader.dimensions();
                check_cells(&name, declared.len(), "declares")?;
                while let Some(cell) = reader.next_cell_with_formula().map_err(|e| cannot(&e))? {
                    let value = Data::from(cell.value);
                    let value = match (value, cell.formula) {
                        (Data::Empty, Some(f)) if !f.trim().is_empty() => Cell::UncachedFormula(f),
                        (Data::Empty, _) => continue,
                        (v, _) => Cell::Value(v),
                    };
                    cells.push((cell.pos, value));
                    check_cells(&name, cells.len() as u64, "has")?;
                }
            }
            fill_merged(&name, &mut cells, &merged)?;
            (name, cells)
        }
    };
    Sheet::new(name, cells)
}

/// The merged ranges of an ODS sheet: cells with `table:number-rows-spanned`
/// or `table:number-columns-spanned`, placed by counting rows and cells (with
/// their `-repeated` counts) as calamine does, so positions agree with its own.
fn ods_merged(data: &[u8], sheet: &str) -> Result<Vec<calamine::Dimensions>, String> {
    use quick_xml::events::{BytesStart, Event};
    let number = |e: &BytesStart<'_>, key: &str| -> u64 {
        e.try_get_attribute(key)
            .ok()
            .flatten()
            .and_then(|a| a.value.trim().parse().ok())
            .unwrap_or(1)
    };
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).map_err(|e| e.to_string())?;
    let content = archive.by_name("content.xml").map_err(|e| e.to_string())?;
    let mut reader = quick_xml::Reader::from_reader(std::io::BufReader::new(content));
    reader.config_mut().expand_empty_elements = true;
    let mut buf = Vec::new();
    let mut regions = Vec::new();
    let (mut in_sheet, mut next_row, mut row, mut col) = (false, 0u64, 0u64, 0u64);
    loop {
        buf.clear();
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| e.to_string())?
        {
            Event::Start(e) if e.name().as_ref() == "table:table" => {
                let name = e.try_get_attribute("table:name").ok().flatten();
                in_sheet = name.is_some_and(|a| a.value.as_ref() == sheet);
                next_row = 0;
            }
            Event::End(e) if in_sheet && e.name().as_ref() == "table:table" => break,
            Event::Start(e) if in_sheet && e.name().as_ref() == "table:table-row" => {
                row = next_row;
                next_row = next_row.saturating_add(number(&e, "table:number-rows-repeated"));
                col = 0;
            }
            Event::Start(e)
                if in_sheet
                    && matches!(
                        e.name().as_ref(),
                        "table:table-cell" | "table:covered-table-cell"
                    ) =>
            {
                if e.name().as_ref() == "table:table-cell" {
                    let rows = number(&e, "table:number-rows-spanned").max(1);
                    let cols = number(&e, "table:number-columns-spanned").max(1);
                    if rows > 1 || cols > 1 {
                        regions.push(calamine::Dimensions::new(
                            (clamp(row), clamp(col)),
                            (clamp(row + rows - 1), clamp(col + cols - 1)),
                        ));
                    }
                }
                col = col.saturating_add(number(&e, "table:number-columns-repeated"));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(regions)
}

/// Refuses an archive that declares it unpacks past [`MAX_UNPACKED_BYTES`]
/// (read from the zip's directory: nothing is unpacked to learn it).
fn check_unpacked_size(data: &[u8], format: FeedFormat) -> Result<(), FileError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).map_err(|e| {
        FileError(format!(
            "this is not an {format} workbook (an {format} file is a zip archive): {e}"
        ))
    })?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| FileError(format!("the workbook's zip archive is damaged: {e}")))?;
        total = total.saturating_add(entry.size());
    }
    if total > MAX_UNPACKED_BYTES {
        return Err(FileError(format!(
            "the workbook would unpack to {total} bytes, more than the {MAX_UNPACKED_BYTES} bytes a workbook may (a file that expands that much is refused unread); split it into smaller files"
        )));
    }
    Ok(())
}

fn check_cells(sheet: &str, cells: u64, verb: &str) -> Result<(), FileError> {
    if cells > MAX_CELLS {
        return Err(FileError(format!(
            "the sheet `{sheet}` {verb} more than {MAX_CELLS} cells, the most a sheet may hold (to bound memory); split it into smaller files"
        )));
    }
    Ok(())
}

/// The sheet to read: the feed's `sheet`, else the first.
fn pick_sheet(names: &[String], wanted: Option<&str>) -> Result<String, FileError> {
    let listed = || {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        None => names
            .first()
            .cloned()
            .ok_or_else(|| FileError("the workbook has no sheets".into())),
        Some(w) => names.iter().find(|n| *n == w).cloned().ok_or_else(|| {
            FileError(format!(
                "the workbook has no sheet `{w}` (the feed's `sheet`); its sheets are: {}",
                listed()
            ))
        }),
    }
}

/// Gives every cell of each merged range its top-left cell's value, as the
/// spreadsheet shows it. Cells are sorted afterwards.
fn fill_merged(
    sheet: &str,
    cells: &mut Vec<((u32, u32), Cell)>,
    merged: &[calamine::Dimensions],
) -> Result<(), FileError> {
    cells.sort_by_key(|(pos, _)| *pos);
    if merged.is_empty() {
        return Ok(());
    }
    let area: u64 = merged.iter().map(|d| d.len()).sum();
    check_cells(
        sheet,
        area.saturating_add(cells.len() as u64),
        "with its merged ranges has",
    )?;
    let mut fills = Vec::new();
    for range in merged {
        let Ok(i) = cells.binary_search_by_key(&range.start, |(pos, _)| *pos) else {
            continue; // an empty merged range: nothing to fill
        };
        let value = cells[i].1.clone();
        for row in range.start.0..=range.end.0 {
            for col in range.start.1..=range.end.1 {
                if (row, col) != range.start {
                    fills.push(((row, col), value.clone()));
                }
            }
        }
    }
    let filled: HashSet<(u32, u32)> = fills.iter().map(|(pos, _)| *pos).collect();
    cells.retain(|(pos, _)| !filled.contains(pos));
    cells.extend(fills);
    cells.sort_by_key(|(pos, _)| *pos);
    Ok(())
}

impl Sheet {
    fn new(name: String, cells: Vec<((u32, u32), Cell)>) -> Result<Sheet, FileError> {
        // The header is the first row with a value in it.
        let Some(header_row) = cells
            .iter()
            .find(|(_, c)| !is_blank(c))
            .map(|((row, _), _)| *row)
        else {
            return Err(FileError(format!("the sheet `{name}` is empty")));
        };
        let mut columns = Vec::new();
        let mut seen = HashSet::new();
        let mut first_data = cells.len();
        for (i, ((row, col), cell)) in cells.iter().enumerate() {
            if *row < header_row {
                continue;
            }
            if *row > header_row {
                first_data = i;
                break;
            }
            let title = match cell_text(cell) {
                Ok(Some(CellText::Text(t))) => t,
                Ok(Some(CellText::Date(d))) => d.to_string(),
                Ok(None) => continue,
                Err(reason) => {
                    return Err(FileError(format!(
                        "the header (row {}, column {}) cannot be read: {reason}",
                        row + 1,
                        column_letter(*col)
                    )));
                }
            };
            if !seen.insert(title.clone()) {
                return Err(FileError(format!(
                    "the header (row {}) of sheet `{name}` names the column `{title}` twice",
                    row + 1
                )));
            }
            columns.push((*col, title));
        }
        Ok(Sheet {
            name,
            cells,
            first_data,
            columns,
        })
    }

    /// The header as a CSV line, for the rows file of rejected rows.
    pub fn header_csv(&self) -> Vec<u8> {
        csv_line(self.columns.iter().map(|(_, n)| n.as_str()))
    }

    /// Checks the header against the feed, then calls `on_row` for each data row.
    pub fn rows(
        self,
        shape: &RecordShape<'_>,
        mut on_row: impl FnMut(Row),
    ) -> Result<(), FileError> {
        let feed = shape.feed;
        let column_named = |field: &Option<String>,
                            label: &str|
         -> Result<Option<usize>, FileError> {
            let Some(field) = field else { return Ok(None) };
            match self.columns.iter().position(|(_, n)| n == field) {
                Some(i) => Ok(Some(i)),
                None => Err(FileError(format!(
                    "the header of sheet `{}` has no `{field}` column (the feed's {label}); its columns are: {}",
                    self.name,
                    self.columns
                        .iter()
                        .take(12)
                        .map(|(_, n)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))),
            }
        };
        let id_column = column_named(&feed.id_field, "id_field")?;
        let time_column = column_named(&feed.time_field, "time_field")?;
        let feed_name = FeedName::from(feed.name.as_str());
        // Header positions in name order, so each row's fields are built sorted.
        let mut sorted: Vec<usize> = (0..self.columns.len()).collect();
        sorted.sort_by(|&a, &b| self.columns[a].1.cmp(&self.columns[b].1));
        let schema: Schema = sorted
            .iter()
            .map(|&i| FieldName::from(self.columns[i].1.as_str()))
            .collect();
        let separators: Vec<Option<&str>> = self
            .columns
            .iter()
            .map(|(_, n)| feed.list_fields.get(n).map(String::as_str))
            .collect();

        let mut texts: Vec<Option<CellText>> = Vec::with_capacity(self.columns.len());
        let mut rest = &self.cells[self.first_data..];
        while let Some(((row, _), _)) = rest.first() {
            let row = *row;
            let end = rest
                .iter()
                .position(|((r, _), _)| *r != row)
                .unwrap_or(rest.len());
            let (cells, after) = rest.split_at(end);
            rest = after;
            if cells.iter().all(|(_, c)| is_blank(c)) {
                continue; // empty rows between rows are not records
            }
            // Each header column's cell, as text; the bad cells' reasons.
            texts.clear();
            texts.resize_with(self.columns.len(), || None);
            let mut bad = Vec::new();
            for ((_, col), cell) in cells {
                let Ok(i) = self.columns.binary_search_by_key(col, |(c, _)| *c) else {
                    continue; // a column with no header name is not read (as in CSV)
                };
                match cell_text(cell) {
                    Ok(t) => texts[i] = t,
                    Err(reason) => bad.push(self.at(i, &reason)),
                }
            }
            let time = match time_column {
                None => None,
                Some(i) => match self.event_time(i, texts[i].as_ref(), shape) {
                    Ok(t) => Some(t),
                    Err(reason) => {
                        bad.push(reason);
                        None
                    }
                },
            };
            if let Some(i) = id_column
                && texts[i].is_none()
                && separators[i].is_none()
            {
                bad.push(self.at(i, "the record id is empty"));
            }
            let shown: Vec<String> = texts.iter().map(|t| shown(t.as_ref(), shape)).collect();
            let outcome = if bad.is_empty() {
                let fields = (0u32..).zip(&sorted).map(|(index, &i)| {
                    let value = match &texts[i] {
                        None => RawValue::Text(""),
                        Some(CellText::Text(t)) => RawValue::Text(t.as_str()),
                        Some(CellText::Date(_)) => RawValue::Text(shown[i].as_str()),
                    };
                    (index, value, separators[i])
                });
                build_event_timed(&feed_name, &schema, fields, None, time, shape)
            } else {
                Err(bad.join("; "))
            };
            match outcome {
                Ok(event) => on_row(Row::Event(Box::new(event))),
                Err(reason) => on_row(Row::Error(RowError {
                    row: u64::from(row) + 1,
                    line: 0,
                    reason,
                    span: None,
                    verbatim: csv_line(shown.iter().map(String::as_str)),
                })),
            }
        }
        Ok(())
    }

    /// `column C (`tested_at`): reason`, for header column `i`.
    fn at(&self, i: usize, reason: &str) -> String {
        let (col, name) = &self.columns[i];
        format!("column {} (`{name}`): {reason}", column_letter(*col))
    }

    /// The event time from the time column's cell: a date cell as it is, text
    /// parsed as in CSV; and not too far ahead of the clock.
    fn event_time(
        &self,
        i: usize,
        cell: Option<&CellText>,
        shape: &RecordShape<'_>,
    ) -> Result<Timestamp, String> {
        let feed = shape.feed;
        let (time, written) = match cell {
            None => return Err(self.at(i, "the event time is empty")),
            Some(CellText::Date(civil)) => {
                let time = shape
                    .timezone
                    .to_timestamp(*civil)
                    .map_err(|e| self.at(i, &format!("the date {civil} is not a time: {e}")))?;
                (time, civil.to_string())
            }
            Some(CellText::Text(t)) => {
                let time = parse_time(t, feed.time_format.as_deref(), shape.timezone)
                    .map_err(|hint| self.at(i, &format!("value `{t}` is not a time; {hint}")))?;
                (time, t.clone())
            }
        };
        if let Some(reason) = too_far_ahead(time, shape.wall_clock, feed.max_future) {
            return Err(self.at(i, &format!("value `{written}` {reason}")));
        }
        Ok(time)
    }
}

/// A cell's value for a record: text, or a date (a civil time, placed in
/// `daemon.timezone` when used).
#[derive(Debug, Clone, PartialEq)]
enum CellText {
    Text(String),
    Date(civil::DateTime),
}

/// Whether a cell holds nothing (what [`cell_text`] reads as `None`), without
/// copying its text.
fn is_blank(cell: &Cell) -> bool {
    match cell {
        Cell::Value(Data::Empty) => true,
        Cell::Value(Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s)) => {
            trim(s).is_empty()
        }
        _ => false,
    }
}

/// A cell as text (trimmed; `None` when empty), or why it cannot be read.
fn cell_text(cell: &Cell) -> Result<Option<CellText>, String> {
    let text = |s: String| Ok((!s.is_empty()).then_some(CellText::Text(s)));
    let value = match cell {
        Cell::UncachedFormula(f) => {
            return Err(format!(
                "the formula `={}` has no saved value (the file was written by a program that does not calculate formulas); open and save it in a spreadsheet program",
                f.trim_start_matches('=')
            ));
        }
        Cell::Value(v) => v,
    };
    match value {
        Data::Empty => Ok(None),
        Data::String(s) => text(trim(s).to_string()),
        Data::Int(i) => text(i.to_string()),
        Data::Float(f) => text(number_text(*f)),
        Data::Bool(b) => text(if *b { "TRUE" } else { "FALSE" }.to_string()),
        Data::Error(e) => Err(format!("the cell holds the error {e}")),
        Data::DurationIso(s) => text(trim(s).to_string()),
        Data::DateTimeIso(s) => match iso_civil(s) {
            Some(d) => Ok(Some(CellText::Date(d))),
            None => text(trim(s).to_string()),
        },
        Data::DateTime(dt) if dt.is_duration() => text(duration_text(dt.as_f64())),
        Data::DateTime(dt) if (0.0..1.0).contains(&dt.as_f64()) => {
            // A time of day with no date (serial 0.x): what the cell shows.
            text(duration_text(dt.as_f64()))
        }
        Data::DateTime(dt) => excel_civil(dt).map(|d| Some(CellText::Date(d))),
    }
}

/// An ODS date or date-time (`2025-11-04`, `2025-11-04T11:30:00`).
fn iso_civil(s: &str) -> Option<civil::DateTime> {
    s.parse::<civil::DateTime>()
        .ok()
        .or_else(|| s.parse::<civil::Date>().ok().map(|d| d.at(0, 0, 0, 0)))
}

/// Excel's day count (serial, 1900 or 1904 system) as a civil date-time.
/// Serial 60 in the 1900 system is 1900-02-29, a day that never was (Excel
/// kept Lotus 1-2-3's leap-year bug): a bad cell, not a guess.
pub(crate) fn excel_civil(dt: &ExcelDateTime) -> Result<civil::DateTime, String> {
    let serial = dt.as_f64();
    // Excel's range: 0 to 9999-12-31 (serial 2,958,465 in the 1900 system).
    if !serial.is_finite() || !(0.0..2_958_466.0).contains(&serial) {
        return Err(format!("the date serial {serial} is outside Excel's dates"));
    }
    let (y, m, d, h, min, s, ms) = dt.to_ymd_hms_milli();
    let date = civil::Date::new(y as i16, m as i8, d as i8).map_err(|_| {
        format!(
            "{y:04}-{m:02}-{d:02} is not a real date (Excel's 1900-02-29, a day that never was); enter the date again"
        )
    })?;
    civil::Time::new(h as i8, min as i8, s as i8, i32::from(ms) * 1_000_000)
        .map(|t| date.to_datetime(t))
        .map_err(|e| format!("the date serial {serial} has no valid time of day: {e}"))
}

/// A number as a spreadsheet would print it: whole numbers without `.0`,
/// others in their shortest exact decimal.
fn number_text(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// A duration in days (Excel's unit) as `H:MM:SS`.
fn duration_text(days: f64) -> String {
    let secs = (days * 86_400.0).round() as i64;
    let sign = if secs < 0 { "-" } else { "" };
    let secs = secs.abs();
    format!(
        "{sign}{}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// How a cell's value is shown in a field and in the rows file: a date as
/// RFC 3339 with `daemon.timezone`'s offset.
fn shown(cell: Option<&CellText>, shape: &RecordShape<'_>) -> String {
    match cell {
        None => String::new(),
        Some(CellText::Text(t)) => t.clone(),
        Some(CellText::Date(civil)) => match civil.to_zoned_datetime(shape.timezone.clone()) {
            Ok(z) => z.strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string(),
            Err(_) => civil.to_string(),
        },
    }
}

/// One CSV line (with its line end) of `values`.
fn csv_line<'a>(values: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::new());
    // Writing to a Vec cannot fail, and a record of strings is always valid CSV.
    let _ = out.write_record(values);
    out.into_inner().unwrap_or_default()
}

/// A column's letters: 0 → `A`, 25 → `Z`, 26 → `AA`, 16,383 → `XFD`.
pub fn column_letter(col: u32) -> String {
    let mut n = u64::from(col) + 1;
    let mut letters = Vec::new();
    while n > 0 {
        let rem = ((n - 1) % 26) as u8;
        letters.push(b'A' + rem);
        n = (n - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::ExcelDateTimeType;

    fn civil_of(serial: f64, is_1904: bool) -> Result<civil::DateTime, String> {
        excel_civil(&ExcelDateTime::new(
            serial,
            ExcelDateTimeType::DateTime,
            is_1904,
        ))
    }

    #[test]
    fn column_letters() {
        assert_eq!(column_letter(0), "A");
        assert_eq!(column_letter(25), "Z");
        assert_eq!(column_letter(26), "AA");
        assert_eq!(column_letter(27), "AB");
        assert_eq!(column_letter(701), "ZZ");
        assert_eq!(column_letter(702), "AAA");
        assert_eq!(column_letter(16_383), "XFD");
    }

    #[test]
    fn the_1900_leap_day_that_never_was_is_a_bad_cell() {
        let err = civil_of(60.0, false).unwrap_err();
        assert!(err.contains("1900-02-29"), "{err}");
        assert_eq!(
            civil_of(59.0, false).unwrap(),
            civil::date(1900, 2, 28).at(0, 0, 0, 0)
        );
        assert_eq!(
            civil_of(61.0, false).unwrap(),
            civil::date(1900, 3, 1).at(0, 0, 0, 0)
        );
        assert_eq!(
            civil_of(1.0, false).unwrap(),
            civil::date(1900, 1, 1).at(0, 0, 0, 0)
        );
    }

    #[test]
    fn both_date_systems() {
        // 2025-11-04 11:30 is serial 45965.479166… in 1900, 1462 days less in 1904.
        let serial = 45965.0 + 11.5 / 24.0;
        let want = civil::date(2025, 11, 4).at(11, 30, 0, 0);
        assert_eq!(civil_of(serial, false).unwrap(), want);
        assert_eq!(civil_of(serial - 1462.0, true).unwrap(), want);
        assert_eq!(
            civil_of(0.0, true).unwrap(),
            civil::date(1904, 1, 1).at(0, 0, 0, 0)
        );
        // In 1904 there is no fake leap day: serial 60 is an ordinary date.
        assert_eq!(
            civil_of(59.0, true).unwrap(),
            civil::date(1904, 2, 29).at(0, 0, 0, 0)
        );
    }

    #[test]
    fn dates_out_of_range_are_bad_cells() {
        assert!(civil_of(-1.0, false).is_err());
        assert!(civil_of(3_000_000.0, false).is_err());
        assert!(civil_of(f64::NAN, false).is_err());
    }

    #[test]
    fn numbers_print_as_spreadsheets_show_them() {
        assert_eq!(number_text(100.0), "100");
        assert_eq!(number_text(-3.0), "-3");
        assert_eq!(number_text(0.1), "0.1");
        assert_eq!(number_text(2.5), "2.5");
        assert_eq!(number_text(1e20), "100000000000000000000");
        assert_eq!(duration_text(0.5), "12:00:00");
    }

    #[test]
    fn cells_as_text() {
        let t = |d: Data| cell_text(&Cell::Value(d));
        assert_eq!(
            t(Data::String(" 0100 ".into())),
            Ok(Some(CellText::Text("0100".into())))
        );
        assert_eq!(t(Data::String("  ".into())), Ok(None));
        assert_eq!(
            t(Data::Float(1234.0)),
            Ok(Some(CellText::Text("1234".into())))
        );
        assert!(
            t(Data::Error(calamine::CellErrorType::Div0))
                .unwrap_err()
                .contains("#DIV/0!")
        );
        assert!(
            cell_text(&Cell::UncachedFormula("B2*2".into()))
                .unwrap_err()
                .contains("=B2*2")
        );
        assert_eq!(
            t(Data::DateTimeIso("2025-11-04T11:30:00".into())),
            Ok(Some(CellText::Date(
                civil::date(2025, 11, 4).at(11, 30, 0, 0)
            )))
        );
    }

    #[test]
    fn a_missing_sheet_names_the_sheets_there_are() {
        let names = vec!["Summary".to_string(), "Results".to_string()];
        assert_eq!(pick_sheet(&names, None).unwrap(), "Summary");
        assert_eq!(pick_sheet(&names, Some("Results")).unwrap(), "Results");
        let err = pick_sheet(&names, Some("Data")).unwrap_err().0;
        assert!(err.contains("no sheet `Data`"), "{err}");
        assert!(err.contains("`Summary`, `Results`"), "{err}");
    }

    /// A real workbook (rust_xlsxwriter) with one cell at A1 and one at
    /// XFD1048576: its declared dimensions are Excel's whole grid.
    #[test]
    fn a_sheet_declaring_more_cells_than_the_bound_is_refused_before_it_is_read() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let ws = book.add_worksheet();
        ws.write_string(0, 0, "sample_id").unwrap();
        ws.write_string(1_048_575, 16_383, "far away").unwrap();
        let bytes = book.save_to_buffer().unwrap();
        let err = from_bytes(bytes, FeedFormat::Xlsx, None).err().unwrap().0;
        assert!(err.contains("declares more than 10000000 cells"), "{err}");
    }

    /// Sets the uncompressed size that `name`'s zip headers (local and
    /// central) declare, as a hostile producer could.
    fn declare_size(zip: &mut [u8], name: &[u8], size: u32) {
        for (magic, size_at, name_len_at, name_at) in
            [(b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)]
        {
            let mut i = 0;
            while let Some(found) = zip[i..].windows(4).position(|w| w == magic) {
                let at = i + found;
                let len = u16::from_le_bytes([zip[at + name_len_at], zip[at + name_len_at + 1]]);
                if zip.get(at + name_at..at + name_at + len as usize) == Some(name) {
                    zip[at + size_at..at + size_at + 4].copy_from_slice(&size.to_le_bytes());
                }
                i = at + 4;
            }
        }
    }

    fn small_workbook() -> Vec<u8> {
        let mut book = rust_xlsxwriter::Workbook::new();
        let ws = book.add_worksheet();
        ws.write_string(0, 0, "sample_id").unwrap();
        for row in 1..2000 {
            ws.write_string(row, 0, format!("S{row:05}")).unwrap();
        }
        book.save_to_buffer().unwrap()
    }

    #[test]
    fn a_workbook_declaring_a_huge_unpacked_size_is_refused_unread() {
        let mut bytes = small_workbook();
        assert!(from_bytes(bytes.clone(), FeedFormat::Xlsx, None).is_ok());
        declare_size(&mut bytes, b"xl/worksheets/sheet1.xml", 2_000_000_000);
        let err = from_bytes(bytes, FeedFormat::Xlsx, None).err().unwrap().0;
        assert!(err.contains("would unpack to"), "{err}");
    }

    /// The declared sizes bound what is unpacked: the zip crate stops an entry
    /// that inflates past its declared size, so a lying header cannot get a
    /// bomb past the check above.
    #[test]
    fn an_entry_larger_than_it_declares_is_refused() {
        let mut bytes = small_workbook();
        declare_size(&mut bytes, b"xl/worksheets/sheet1.xml", 1000);
        let err = from_bytes(bytes, FeedFormat::Xlsx, None).err().unwrap().0;
        assert!(
            err.contains("larger than its declared uncompressed size"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_zip_is_refused_whole() {
        let err = from_bytes(b"sample_id,tested_at\n".to_vec(), FeedFormat::Xlsx, None)
            .err()
            .unwrap()
            .0;
        assert!(err.contains("not an xlsx workbook"), "{err}");
    }

    #[test]
    fn merged_ranges_take_their_top_left_value() {
        let mut cells = vec![
            ((0, 0), Cell::Value(Data::String("a".into()))),
            ((1, 1), Cell::Value(Data::String("Bolton".into()))),
        ];
        let merged = [calamine::Dimensions::new((1, 1), (3, 1))];
        fill_merged("S", &mut cells, &merged).unwrap();
        let positions: Vec<_> = cells.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, vec![(0, 0), (1, 1), (2, 1), (3, 1)]);
        assert!(matches!(&cells[3].1, Cell::Value(Data::String(s)) if s == "Bolton"));
        let huge = [calamine::Dimensions::new((0, 0), (1_048_575, 16_383))];
        let err = fill_merged("S", &mut cells, &huge).unwrap_err().0;
        assert!(err.contains("more than 10000000 cells"), "{err}");
    }
}

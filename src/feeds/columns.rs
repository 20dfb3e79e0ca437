//! A CSV file's columns, and a record read straight from its cells.
//!
//! [`parse`](super::parse) turns each CSV record into an [`Event`] through
//! [`CsvColumns::event`]. Replay, which needs an event only for the rows some
//! rule keeps, asks the same columns for just the parts it needs: the record's
//! time and its checks ([`CsvColumns::time`]), its fingerprint
//! ([`CsvColumns::fingerprint`], the very bytes of
//! [`record_fingerprint`](super::record_fingerprint)) and
//! single values ([`CsvColumns::value_into`]). Every path goes through the same
//! helpers as the event, so a record reads the same whichever way it is taken.
//! Pure: no I/O.

use super::parse::{
    RawValue, RecordShape, RowError, build_event_timed, cell_value, list_pieces, record_id_and_time,
};
use crate::config::FeedConfig;
use crate::event::{Event, FeedName, FieldName, Schema, Text, Value, trim};
use jiff::Timestamp;
use std::borrow::Cow;
use std::sync::Arc;

/// The cells of one record, by column (the header's order).
pub trait Cells {
    /// The text of a column's cell as written ("" past the last cell).
    fn cell(&self, column: usize) -> &str;
}

impl Cells for csv::StringRecord {
    fn cell(&self, column: usize) -> &str {
        self.get(column).unwrap_or("")
    }
}

/// What the CSV loop hands each record that has the header's number of fields.
pub trait CsvSink {
    /// Takes a record; an `Err` is the reason it is a bad row, which the loop
    /// then hands to [`CsvSink::bad_row`] with its line and text.
    fn record(
        &mut self,
        columns: &Arc<CsvColumns>,
        record: &csv::StringRecord,
        shape: &RecordShape<'_>,
    ) -> Result<(), String>;

    /// A row that could not be read, in its place among the records.
    fn bad_row(&mut self, error: RowError);
}

/// A CSV file's columns (from its header, checked) and what the feed's
/// settings make of each: which are lists, which hold the id and the time,
/// and their order by name, which is the order of an event's fields.
#[derive(Debug)]
pub struct CsvColumns {
    feed: FeedName,
    /// By column, as the header names them (trimmed; unique when not empty).
    pub(super) names: Vec<FieldName>,
    /// Each column's list separator, looked up once per file rather than per cell.
    separators: Vec<Option<String>>,
    /// Column indices in name order, so each row's fields are built sorted.
    sorted_columns: Vec<usize>,
    /// The names in that order: the schema every row of the file shares.
    schema: Schema,
    id_column: Option<usize>,
    time_column: Option<usize>,
    /// Whether the id and time are read straight from their cells. Not when
    /// the feed names a list column (or one the file lacks) for them: then
    /// only a built event says what they are.
    direct_id_and_time: bool,
}

impl CsvColumns {
    pub(super) fn new(feed_name: &FeedName, header: &[String], feed: &FeedConfig) -> CsvColumns {
        let names: Vec<FieldName> = header.iter().map(|h| FieldName::from(h.as_str())).collect();
        let separators: Vec<Option<String>> = names
            .iter()
            .map(|n| feed.list_fields.get(&**n).cloned())
            .collect();
        let mut sorted_columns: Vec<usize> =
            (0..names.len()).filter(|&i| !names[i].is_empty()).collect();
        sorted_columns.sort_by(|&a, &b| names[a].cmp(&names[b]));
        // Column names are unique (check_header), so in this order they are a schema.
        let schema: Schema = sorted_columns.iter().map(|&i| names[i].clone()).collect();
        // A list column is left to the event, which joins its elements the way it shows them.
        let column_of = |field: &Option<String>| {
            field
                .as_deref()
                .filter(|f| !f.is_empty())
                .and_then(|f| names.iter().position(|n| &**n == f))
                .filter(|&i| separators[i].is_none())
        };
        let id_column = column_of(&feed.id_field);
        let time_column = column_of(&feed.time_field);
        let direct_id_and_time = (feed.id_field.is_none() || id_column.is_some())
            && (feed.time_field.is_none() || time_column.is_some());
        CsvColumns {
            feed: feed_name.clone(),
            names,
            separators,
            sorted_columns,
            schema,
            id_column,
            time_column,
            direct_id_and_time,
        }
    }

    /// The feed's name, shared with the events of the file.
    pub fn feed(&self) -> &FeedName {
        &self.feed
    }

    /// How many cells a record has.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name the header gives a column ("" for a column without one).
    pub fn name(&self, column: usize) -> &str {
        self.names.get(column).map_or("", |n| n)
    }

    /// The column a field is read from, if the file has it.
    pub fn column(&self, field: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| !n.is_empty() && &**n == field)
    }

    /// Whether [`CsvColumns::time`] can check a record from its cells alone.
    pub fn reads_id_and_time_directly(&self) -> bool {
        self.direct_id_and_time
    }

    /// Whether records have an id (the feed names an id field).
    pub fn has_id(&self) -> bool {
        self.id_column.is_some()
    }

    /// The record as an event, or why it is a bad row. `known_time` is its
    /// time when already read and checked by [`CsvColumns::time`].
    pub fn event(
        &self,
        cells: &impl Cells,
        known_time: Option<Timestamp>,
        shape: &RecordShape<'_>,
    ) -> Result<Event, String> {
        let fields = (0u32..).zip(&self.sorted_columns).map(|(index, &i)| {
            (
                index,
                RawValue::Text(cells.cell(i)),
                self.separators[i].as_deref(),
            )
        });
        let id_and_time = self.direct_id_and_time.then(|| {
            (
                self.id_column.map(|i| cells.cell(i)),
                self.time_column.map(|i| cells.cell(i)),
            )
        });
        build_event_timed(
            &self.feed,
            &self.schema,
            fields,
            id_and_time,
            known_time,
            shape,
        )
    }

    /// The record's event time, after the checks its event would get (an id
    /// and a time where the feed names them, a time that reads as one and is
    /// not too far ahead), with the same reasons when one fails. Only when
    /// [`CsvColumns::reads_id_and_time_directly`].
    pub fn time(&self, cells: &impl Cells, shape: &RecordShape<'_>) -> Result<Timestamp, String> {
        debug_assert!(self.direct_id_and_time);
        let id = self.id_column.map(|i| Cow::Borrowed(cells.cell(i)));
        let time = self.time_column.map(|i| Cow::Borrowed(cells.cell(i)));
        record_id_and_time(id, time, None, shape).map(|(_, time)| time)
    }

    /// The record's fingerprint: exactly [`record_fingerprint`](super::record_fingerprint) of its event,
    /// without building the event.
    pub fn fingerprint(&self, cells: &impl Cells) -> [u8; 16] {
        super::fingerprint_with(&self.feed, |out| {
            for &i in &self.sorted_columns {
                let cell = cells.cell(i);
                if trim(cell).is_empty() {
                    continue;
                }
                match &self.separators[i] {
                    None => out.text(&self.names[i], trim(cell)),
                    Some(sep) => out.list_unless_empty(&self.names[i], list_pieces(cell, sep)),
                }
            }
        })
    }

    /// Puts the value of `column`'s cell into `slot`, as the record's event
    /// would hold it, reusing the list `slot` already holds. An empty cell
    /// leaves an empty value, which every condition reads as absent.
    pub fn value_into(&self, column: usize, cells: &impl Cells, slot: &mut Value) {
        let cell = cells.cell(column);
        match (&self.separators[column], slot) {
            // A blank cell has no pieces: the list is left empty.
            (Some(sep), Value::List(items)) => {
                items.clear();
                items.extend(list_pieces(cell, sep).map(Text::from));
            }
            (separator, slot) => {
                *slot = cell_value(cell, separator.as_deref())
                    .unwrap_or_else(|| Value::Text(Text::default()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FeedConfig};
    use crate::event::Value;
    use crate::feeds::record_fingerprint;

    /// Rows of every shape the settings distinguish: blank cells, lists with
    /// empty pieces and spaces, a separator that itself ends in a space.
    fn rows() -> Vec<Vec<&'static str>> {
        vec![
            vec!["S-1", "2025-03-01T10:00:00Z", "Bolton", "a;b", "x, y"],
            vec!["S-2", " 2025-03-01T10:00:01Z ", "  ", ";;", ""],
            vec![" S-3", "2025-03-01T10:00:02Z", "Bury ", " ; c ;", "x,  y, "],
            vec!["S-4", "2025-03-01T10:00:03Z", "", "", " , "],
            vec!["S-5", "2025-03-01T10:00:04Z", "Ünïcode", "naïve;éé", "a, "],
        ]
    }

    fn feed() -> FeedConfig {
        Config::parse(
            std::path::Path::new("/x/c.toml"),
            "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"lab\"\ndir = \"in\"\nformat = \"csv\"\nid_field = \"id\"\ntime_field = \"at\"\nlist_fields = { subs = \";\", tags = \", \" }\n",
        )
        .unwrap()
        .feeds
        .remove(0)
    }

    static UTC: jiff::tz::TimeZone = jiff::tz::TimeZone::UTC;

    fn shape(feed: &FeedConfig, wall_clock: Option<Timestamp>) -> RecordShape<'_> {
        RecordShape {
            feed,
            timezone: &UTC,
            default_time: Timestamp::UNIX_EPOCH,
            wall_clock,
        }
    }

    fn columns(feed: &FeedConfig) -> (Vec<String>, CsvColumns) {
        let header: Vec<String> = ["id", "at", "district", "subs", "tags"]
            .map(String::from)
            .to_vec();
        let columns = CsvColumns::new(&FeedName::from("lab"), &header, feed);
        (header, columns)
    }

    #[test]
    fn cells_give_what_the_event_holds_and_its_fingerprint() {
        let feed = feed();
        let (header, columns) = columns(&feed);
        assert!(columns.reads_id_and_time_directly());
        let shape = shape(&feed, None);
        for row in rows() {
            let record = csv::StringRecord::from(row.clone());
            let event = columns.event(&record, None, &shape).unwrap();
            let time = columns.time(&record, &shape).unwrap();
            assert_eq!(time, event.time, "{row:?}");
            assert_eq!(
                columns.fingerprint(&record),
                record_fingerprint(&event),
                "{row:?}"
            );
            assert_eq!(columns.event(&record, Some(time), &shape).unwrap(), event);
            for (column, name) in header.iter().enumerate() {
                let mut slot = Value::List(vec!["stale".into()]);
                columns.value_into(column, &record, &mut slot);
                let got = Some(&slot).filter(|v| !v.is_empty());
                assert_eq!(got, event.get(name), "{name} in {row:?}");
                let mut fresh = Value::Text("stale".into());
                columns.value_into(column, &record, &mut fresh);
                assert_eq!(Some(&fresh).filter(|v| !v.is_empty()), event.get(name));
            }
        }
    }

    #[test]
    fn a_bad_id_or_time_gives_the_reason_the_event_would() {
        let feed = feed();
        let (_, columns) = columns(&feed);
        let shape = shape(&feed, Some("2025-03-01T00:00:00Z".parse().unwrap()));
        for row in [
            vec![" ", "2025-03-01T10:00:00Z", "", "", ""],
            vec!["S-1", "", "", "", ""],
            vec!["S-1", "yesterday", "", "", ""],
            vec!["S-1", "2099-01-01T00:00:00Z", "", "", ""],
        ] {
            let record = csv::StringRecord::from(row.clone());
            let want = columns.event(&record, None, &shape).unwrap_err();
            assert_eq!(columns.time(&record, &shape).unwrap_err(), want, "{row:?}");
        }
    }
}

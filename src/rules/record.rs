//! What the rules read of a row: an [`Event`], or a row not yet made into one.
//!
//! Conditions, the rule index and the engine read a row only through
//! [`Record`]: its feed, its time, and the values of the fields the rule set
//! reads (by slot, see [`crate::rules::condition::ConditionIndex`]). An
//! [`Event`] is one. Replay has another, a CSV row held as its cells with
//! only the rule set's fields made into values ([`SlotValues`]); the engine
//! asks it for a whole event ([`Record::to_event`]) only when a rule keeps
//! the row, which for most rows no rule does.

use crate::event::{Event, Value};
use crate::rules::condition::EvalScratch;
use jiff::Timestamp;
use std::sync::Arc;

/// A row as the rules read it.
pub trait Record {
    /// The feed it came from.
    fn feed(&self) -> &str;
    /// Its event time.
    fn time(&self) -> Timestamp;
    /// A field's value by name; absent and empty are both `None`.
    fn get(&self, name: &str) -> Option<&Value>;
    /// The value of the field in `slot` of the rule set's field names, when
    /// `scratch` was bound to this record by [`Record::bind`]; absent and
    /// empty are both `None`.
    fn slot_value<'r>(&'r self, slot: usize, scratch: &EvalScratch) -> Option<&'r Value>;
    /// Readies `scratch` for this record, before any condition is evaluated
    /// on it: `slots` are the rule set's field names.
    fn bind(&self, scratch: &mut EvalScratch, slots: &Arc<[String]>);
    /// The record as a whole event, for rule state that keeps it.
    fn to_event(&self) -> Event;
}

impl Record for Event {
    fn feed(&self) -> &str {
        &self.feed
    }

    fn time(&self) -> Timestamp {
        self.time
    }

    fn get(&self, name: &str) -> Option<&Value> {
        Event::get(self, name)
    }

    fn slot_value<'r>(&'r self, slot: usize, scratch: &EvalScratch) -> Option<&'r Value> {
        scratch
            .position(slot)
            .map(|i| self.fields.value_at(i))
            .filter(|v| !v.is_empty())
    }

    fn bind(&self, scratch: &mut EvalScratch, slots: &Arc<[String]>) {
        scratch.bind(self, slots);
    }

    fn to_event(&self) -> Event {
        self.clone()
    }
}

/// The values of the rule set's fields for one row, by slot: what a row not
/// yet made into an event gives the conditions. Reused from row to row, so a
/// list keeps its allocation.
#[derive(Debug, Clone)]
pub struct SlotValues {
    slots: Arc<[String]>,
    /// By slot; an empty value is an absent field.
    values: Vec<Value>,
}

impl SlotValues {
    /// Room for the values of `slots` (the rule set's field names), all absent.
    pub fn new(slots: &Arc<[String]>) -> SlotValues {
        SlotValues {
            slots: slots.clone(),
            values: vec![Value::Text(Default::default()); slots.len()],
        }
    }

    /// The field names, by slot.
    pub fn slots(&self) -> &Arc<[String]> {
        &self.slots
    }

    /// The value in `slot`, to be overwritten for the next row.
    pub fn value_mut(&mut self, slot: usize) -> &mut Value {
        &mut self.values[slot]
    }

    /// Marks `slot` absent (a field the row does not have).
    pub fn clear(&mut self, slot: usize) {
        self.values[slot] = Value::Text(Default::default());
    }

    /// The present value in `slot`.
    pub fn get(&self, slot: usize) -> Option<&Value> {
        self.values.get(slot).filter(|v| !v.is_empty())
    }

    /// The slot of the field `name`, if the rule set reads it.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s == name)
    }
}

//! The condition language of `when`: parsing and evaluation.
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | primary
//! primary    := "(" expr ")" | "exists" "(" field ")" | field op operand
//! op         := "==" | "!=" | "<" | "<=" | ">" | ">=" | "~" | "!~" | "in" | "not" "in"
//! operand    := string | number | "[" (string | number) ("," ...)* "]" | list-name
//! ```
//!
//! Parsing never panics: it returns a [`ConditionError`] with the byte offset
//! of the problem in the source, which the rule loader turns into file, line
//! and column. Regular expressions are compiled and named lists resolved once,
//! at load time. Evaluation does no I/O and never allocates for the common
//! operators.

use crate::event::{
    Event, Scalar, Value, normalise_into, normalise_term, parse_number, terms_equal,
};
use crate::rules::record::Record;
use jiff::Timestamp;
use regex::Regex;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A parse or resolution error at a byte offset of the condition text.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// No `when`: every event matches.
    Always,
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
    Exists(FieldRef),
    Compare {
        field: FieldRef,
        op: CompareOp,
        literal: Literal,
    },
    Regex {
        field: FieldRef,
        regex: Regex,
        negated: bool,
    },
    In {
        field: FieldRef,
        set: TermSet,
        negated: bool,
    },
}

/// A field a condition reads: its name, and once the rule set is loaded, its
/// slot in the set's list of field names, so evaluating a row looks each
/// field up once for all rules instead of once per test.
#[derive(Debug, Clone)]
pub struct FieldRef {
    pub name: String,
    slot: Option<usize>,
    /// The number of the test this field is read by (see [`ConditionIndex`]):
    /// the same test in many rules is evaluated once per event.
    atom: Option<usize>,
}

impl FieldRef {
    fn new(name: String) -> FieldRef {
        FieldRef {
            name,
            slot: None,
            atom: None,
        }
    }

    /// The field's slot in the rule set's list of field names, once indexed.
    pub(crate) fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// The field's value in `event`, through the slot when the scratch is bound to it.
    /// Absent and empty values are both `None`: every test reads a field through here.
    pub(crate) fn value<'e, R: Record + ?Sized>(
        &self,
        event: &'e R,
        scratch: &EvalScratch,
    ) -> Option<&'e Value> {
        match (self.slot, scratch.bound) {
            (Some(slot), true) => event.slot_value(slot, scratch),
            _ => event.get(&self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal on the right of a comparison, typed once at load time.
#[derive(Debug, Clone)]
pub enum Literal {
    Number(f64),
    Time(Timestamp),
    /// Kept lower-cased: string comparisons ignore case.
    Text(String),
}

/// The members of a list, normalised for membership tests.
#[derive(Debug, Clone, Default)]
pub struct TermSet {
    /// FxHash: these are short keys looked up millions of times per replay.
    terms: rustc_hash::FxHashSet<String>,
}

impl TermSet {
    pub fn new<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        TermSet {
            terms: items.into_iter().map(normalise_term).collect(),
        }
    }

    /// Whether `value` is in the set, ignoring case, spaces and punctuation.
    /// `scratch` is reused between calls so that membership does not allocate.
    pub fn contains(&self, value: &str, scratch: &mut String) -> bool {
        normalise_into(value, scratch);
        self.terms.contains(scratch.as_str())
    }

    /// Whether an already normalised term is in the set.
    pub fn contains_normalised(&self, term: &str) -> bool {
        self.terms.contains(term)
    }

    /// The normalised members (for the rule index, which maps them back to rules).
    pub fn normalised_terms(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.terms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl Condition {
    /// Parses `source`, resolving list names against `lists`.
    pub fn parse(
        source: &str,
        lists: &BTreeMap<String, Vec<String>>,
    ) -> Result<Condition, ConditionError> {
        let tokens = lex(source)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
            terms: 0,
            lists,
            end: source.len(),
        };
        if parser.peek().is_none() {
            return Err(ConditionError {
                offset: 0,
                message: "the condition is empty; write one like `district == \"Bolton\"` or leave `when` out to match every event".into(),
            });
        }
        let cond = parser.or()?;
        if let Some(tok) = parser.peek() {
            return Err(ConditionError {
                offset: tok.offset,
                message: format!(
                    "unexpected {} here; join conditions with `and` or `or`",
                    tok.kind.describe()
                ),
            });
        }
        Ok(cond)
    }

    /// The field names the condition reads, for checking them against a feed's columns.
    pub fn fields(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_fields(&mut out);
        out
    }

    fn collect_fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Condition::Always => {}
            Condition::And(a, b) | Condition::Or(a, b) => {
                a.collect_fields(out);
                b.collect_fields(out);
            }
            Condition::Not(a) => a.collect_fields(out),
            Condition::Exists(f)
            | Condition::Compare { field: f, .. }
            | Condition::Regex { field: f, .. }
            | Condition::In { field: f, .. } => out.push(&f.name),
        }
    }

    /// Numbers the fields and the tests of this condition in `index`.
    pub fn index_into(&mut self, index: &mut ConditionIndex) {
        match self {
            Condition::Always => {}
            Condition::And(a, b) | Condition::Or(a, b) => {
                a.index_into(index);
                b.index_into(index);
            }
            Condition::Not(a) => a.index_into(index),
            Condition::Exists(_)
            | Condition::Compare { .. }
            | Condition::Regex { .. }
            | Condition::In { .. } => {
                let test = self.test_key();
                let atom = index.atom(test);
                if let Condition::Exists(f)
                | Condition::Compare { field: f, .. }
                | Condition::Regex { field: f, .. }
                | Condition::In { field: f, .. } = self
                {
                    f.slot = Some(index.slot(&f.name));
                    f.atom = Some(atom);
                }
            }
        }
    }

    /// A text that is equal for two tests exactly when they give the same
    /// answer on every event (for a leaf; empty for the others).
    fn test_key(&self) -> String {
        match self {
            Condition::Exists(f) => format!("exists\u{1f}{}", f.name),
            Condition::Compare { field, op, literal } => {
                format!("cmp\u{1f}{}\u{1f}{op:?}\u{1f}{literal:?}", field.name)
            }
            Condition::Regex {
                field,
                regex,
                negated,
            } => format!(
                "re\u{1f}{}\u{1f}{negated}\u{1f}{}",
                field.name,
                regex.as_str()
            ),
            Condition::In {
                field,
                set,
                negated,
            } => {
                let mut terms: Vec<&str> = set.terms.iter().map(String::as_str).collect();
                terms.sort_unstable();
                // Each term ends with a separator, so `{""}` and `{}` differ.
                let mut key = format!("in\u{1f}{}\u{1f}{negated}\u{1f}", field.name);
                for term in terms {
                    key.push_str(term);
                    key.push('\u{1e}');
                }
                key
            }
            _ => String::new(),
        }
    }

    /// The test of a leaf, evaluated once per event however many rules share
    /// it, when the scratch is bound to the event.
    fn leaf<R: Record + ?Sized>(
        &self,
        field: &FieldRef,
        event: &R,
        scratch: &mut EvalScratch,
    ) -> bool {
        let Some(atom) = field.atom.filter(|_| scratch.bound) else {
            return self.evaluate_leaf(event, scratch);
        };
        if scratch.atom_stamps.len() <= atom {
            scratch.atom_stamps.resize(atom + 1, 0);
            scratch.atom_values.resize(atom + 1, false);
        }
        if scratch.atom_stamps[atom] == scratch.generation {
            return scratch.atom_values[atom];
        }
        let value = self.evaluate_leaf(event, scratch);
        scratch.atom_stamps[atom] = scratch.generation;
        scratch.atom_values[atom] = value;
        value
    }

    /// Evaluates the condition on an event. `scratch` must have been told of
    /// this event: [`EvalScratch::bind`] (fields by slot, shared tests answered
    /// once), or [`EvalScratch::next_event`] for a condition outside a rule set.
    pub fn matches<R: Record + ?Sized>(&self, event: &R, scratch: &mut EvalScratch) -> bool {
        match self {
            Condition::Always => true,
            Condition::And(a, b) => a.matches(event, scratch) && b.matches(event, scratch),
            Condition::Or(a, b) => a.matches(event, scratch) || b.matches(event, scratch),
            Condition::Not(a) => !a.matches(event, scratch),
            Condition::Exists(f)
            | Condition::Compare { field: f, .. }
            | Condition::Regex { field: f, .. }
            | Condition::In { field: f, .. } => self.leaf(f, event, scratch),
        }
    }

    fn evaluate_leaf<R: Record + ?Sized>(&self, event: &R, scratch: &mut EvalScratch) -> bool {
        match self {
            Condition::Always | Condition::And(..) | Condition::Or(..) | Condition::Not(_) => {
                self.matches(event, scratch)
            }
            Condition::Exists(field) => field.value(event, scratch).is_some(),
            Condition::Compare { field, op, literal } => match field.value(event, scratch) {
                // A missing field matches nothing, not even `!=`.
                None => false,
                // `!=` on a list means no element is equal, like `not in` and `!~`.
                Some(value) if *op == CompareOp::Ne => !value
                    .elements()
                    .any(|el| compare(el, CompareOp::Eq, literal)),
                Some(value) => value.elements().any(|el| compare(el, *op, literal)),
            },
            Condition::Regex {
                field,
                regex,
                negated,
            } => match field.value(event, scratch) {
                None => false,
                Some(value) => {
                    let any = value.elements().any(|el| match el {
                        Scalar::Text(s) => regex.is_match(s),
                        Scalar::Number(n) => regex.is_match(&n.to_string()),
                    });
                    any != *negated
                }
            },
            Condition::In {
                field,
                set,
                negated,
            } => match field.value(event, scratch) {
                None => false,
                Some(value) => {
                    let any = scratch
                        .normalised(field, value)
                        .iter()
                        .any(|term| set.contains_normalised(term));
                    any != *negated
                }
            },
        }
    }
}

/// Reusable working memory for evaluating conditions on one event at a time.
///
/// Many rules test the same field with `in` (a drug-testing row meets a dozen
/// substance lists); its elements are normalised once per event, not once per
/// test, and a test many rules share is answered once. Call
/// [`EvalScratch::bind`] (or [`EvalScratch::next_event`]) before each new event.
#[derive(Debug, Default)]
pub struct EvalScratch {
    /// For the bound event: the position in its fields of each slot's field.
    positions: Vec<Option<usize>>,
    /// Whether `positions` describes the current event.
    bound: bool,
    /// The schema and the slots `slot_of_name` was worked out for.
    schema: Option<(crate::event::Schema, Arc<[String]>)>,
    /// For each name of that schema, the slot it fills, if a rule reads it.
    slot_of_name: Vec<Option<usize>>,
    /// Normalised elements by field (its slot when bound, else its name), for the current event.
    normalised: Vec<(Option<usize>, String, Vec<String>)>,
    /// How many entries of `normalised` belong to the current event; the rest
    /// are kept only to reuse their allocations.
    used: usize,
    /// Per test (atom): the generation its value in `atom_values` is for.
    /// Bumping the generation forgets every answer at once.
    atom_stamps: Vec<u32>,
    atom_values: Vec<bool>,
    generation: u32,
}

/// Numbers the distinct fields (slots) and the distinct tests (atoms) of a
/// rule set's conditions, so that an event's fields are found once and a test
/// shared by many rules (`form == "tablet"`) is evaluated once per event.
#[derive(Debug, Default)]
pub struct ConditionIndex {
    slots: Vec<String>,
    slot_numbers: std::collections::HashMap<String, usize>,
    atoms: std::collections::HashMap<String, usize>,
}

impl ConditionIndex {
    fn slot(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.slot_numbers.get(name) {
            return slot;
        }
        self.slots.push(name.to_string());
        self.slot_numbers
            .insert(name.to_string(), self.slots.len() - 1);
        self.slots.len() - 1
    }

    fn atom(&mut self, test: String) -> usize {
        let next = self.atoms.len();
        *self.atoms.entry(test).or_insert(next)
    }

    /// Gives `name` a slot, if no condition reads it, so that rows read by
    /// slot ([`crate::rules::record::SlotValues`]) carry it.
    pub fn add_field(&mut self, name: &str) {
        self.slot(name);
    }

    /// The field names by slot, for [`EvalScratch::bind`].
    pub fn into_slots(self) -> Arc<[String]> {
        self.slots.into()
    }
}

impl EvalScratch {
    /// Forgets the previous event's values.
    pub fn next_event(&mut self) {
        self.used = 0;
        self.bound = false;
    }

    /// Forgets every test's answer (the next event is a new one).
    fn new_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: stamps from four billion events ago must not look current.
            self.atom_stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Starts a new event and finds, once, where each field the rule set reads
    /// (`slots`) is in it.
    pub fn bind(&mut self, event: &Event, slots: &Arc<[String]>) {
        self.used = 0;
        self.new_generation();
        self.positions.clear();
        self.positions.resize(slots.len(), None);
        // The rows of a file share one schema, so which slot each of its names
        // fills is worked out once per file, not once per row.
        let schema = event.fields.schema();
        let known = self.schema.as_ref().is_some_and(|(known, known_slots)| {
            Arc::ptr_eq(known, schema) && Arc::ptr_eq(known_slots, slots)
        });
        if !known {
            self.slot_of_name.clear();
            self.slot_of_name.extend(
                schema
                    .iter()
                    .map(|name| slots.iter().position(|s| **s == **name)),
            );
            self.schema = Some((schema.clone(), slots.clone()));
        }
        for (position, index) in event.fields.indices().enumerate() {
            if let Some(slot) = self.slot_of_name[index] {
                self.positions[slot] = Some(position);
            }
        }
        self.bound = true;
    }

    /// Starts a new record that brings its own values by slot
    /// ([`crate::rules::record::SlotValues`]): fields are not looked up.
    pub fn bind_slot_values(&mut self) {
        self.used = 0;
        self.new_generation();
        self.bound = true;
    }

    /// Where the field in `slot` is among the bound event's fields.
    pub(crate) fn position(&self, slot: usize) -> Option<usize> {
        self.positions.get(slot).copied().flatten()
    }

    fn normalised(&mut self, field: &FieldRef, value: &crate::event::Value) -> &[String] {
        // By slot when bound (no string compare), else by name.
        let slot = field.slot.filter(|_| self.bound);
        if let Some(i) = self.normalised[..self.used]
            .iter()
            .position(|(s, f, _)| match slot {
                Some(slot) => *s == Some(slot),
                None => *f == field.name,
            })
        {
            return &self.normalised[i].2;
        }
        if self.used == self.normalised.len() {
            self.normalised.push((None, String::new(), Vec::new()));
        }
        let (entry_slot, name, terms) = &mut self.normalised[self.used];
        *entry_slot = slot;
        name.clear();
        name.push_str(&field.name);
        let mut count = 0;
        for el in value.elements() {
            if terms.len() == count {
                terms.push(String::new());
            }
            el.normalise_into(&mut terms[count]);
            count += 1;
        }
        terms.truncate(count);
        self.used += 1;
        &self.normalised[self.used - 1].2
    }
}

/// Text equality ignoring case and surrounding spaces; `lit` is already lower-case.
///
/// Holds exactly when [`text_key_into`] of `s` is `lit`: the rule index looks
/// literals up by that key, so the two must never disagree.
fn text_equals(s: &str, lit: &str) -> bool {
    let t = crate::event::trim(s);
    if t.is_ascii() && lit.is_ascii() {
        t.eq_ignore_ascii_case(lit)
    } else {
        t.to_lowercase() == lit
    }
}

/// The key under which `==` finds a text element: trimmed and lower-cased
/// as [`Literal::Text`] is, so `text_equals(s, lit)` iff the key is `lit`
/// (ASCII lower-casing is Unicode lower-casing on ASCII text; other text
/// goes through `str::to_lowercase`, as `text_equals` does).
pub(crate) fn text_key_into(s: &str, out: &mut String) {
    out.clear();
    let t = crate::event::trim(s);
    if t.is_ascii() {
        out.extend(t.bytes().map(|b| b.to_ascii_lowercase() as char));
    } else {
        out.push_str(&t.to_lowercase());
    }
}

/// The key under which `==` finds a number element: a number element equals
/// a text literal when its `Display` is the literal (see `compare`).
pub(crate) fn number_text_key_into(n: f64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

fn compare(el: Scalar<'_>, op: CompareOp, literal: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match literal {
        Literal::Number(n) => el.as_number().and_then(|v| v.partial_cmp(n)),
        Literal::Time(t) => match el {
            Scalar::Text(s) => s.trim().parse::<Timestamp>().ok().map(|v| v.cmp(t)),
            Scalar::Number(_) => None,
        },
        Literal::Text(lit) => match el {
            Scalar::Text(s) => {
                if matches!(op, CompareOp::Eq | CompareOp::Ne) {
                    // Equality ignores case (and surrounding spaces from exports).
                    let equal = text_equals(s, lit);
                    return if op == CompareOp::Eq { equal } else { !equal };
                }
                Some(s.trim().to_lowercase().as_str().cmp(lit.as_str()))
            }
            Scalar::Number(n) => Some(n.to_string().as_str().cmp(lit.as_str())),
        },
    };
    let Some(ord) = ordering else {
        // Not comparable (a word against a number): only `!=` holds.
        return op == CompareOp::Ne;
    };
    match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
    }
}

/// Byte offset of the first use of `field` as a name in `source` (not inside quotes).
pub fn field_offset(source: &str, field: &str) -> Option<usize> {
    lex(source).ok()?.into_iter().find_map(|t| match t.kind {
        TokenKind::Ident(name) if name == field => Some(t.offset),
        _ => None,
    })
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Ident(String),
    Str(String),
    Number(f64),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl TokenKind {
    fn describe(&self) -> String {
        match self {
            TokenKind::Ident(s) => format!("`{s}`"),
            TokenKind::Str(s) => format!("text \"{s}\""),
            TokenKind::Number(n) => format!("number {n}"),
            TokenKind::Op(op) => format!("`{op}`"),
            TokenKind::LParen => "`(`".into(),
            TokenKind::RParen => "`)`".into(),
            TokenKind::LBracket => "`[`".into(),
            TokenKind::RBracket => "`]`".into(),
            TokenKind::Comma => "`,`".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    offset: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, ConditionError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let single = |kind| Token {
            kind,
            offset: start,
        };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(single(TokenKind::LParen));
                i += 1
            }
            b')' => {
                tokens.push(single(TokenKind::RParen));
                i += 1
            }
            b'[' => {
                tokens.push(single(TokenKind::LBracket));
                i += 1
            }
            b']' => {
                tokens.push(single(TokenKind::RBracket));
                i += 1
            }
            b',' => {
                tokens.push(single(TokenKind::Comma));
                i += 1
            }
            b'"' | b'\'' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                loop {
                    let Some(&b) = bytes.get(i) else {
                        return Err(ConditionError {
                            offset: start,
                            message: format!(
                                "this text has no closing {}",
                                if quote == b'"' {
                                    "double quote"
                                } else {
                                    "quote"
                                }
                            ),
                        });
                    };
                    if b == quote {
                        i += 1;
                        break;
                    }
                    if b == b'\\' && bytes.get(i + 1) == Some(&quote) {
                        value.push(quote as char);
                        i += 2;
                        continue;
                    }
                    // Advance by a whole UTF-8 character.
                    let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                    value.push(ch);
                    i += ch.len_utf8();
                }
                tokens.push(Token {
                    kind: TokenKind::Str(value),
                    offset: start,
                });
            }
            b'=' | b'!' | b'<' | b'>' | b'~' => {
                let two = src.get(i..i + 2).unwrap_or("");
                let (op, len): (&'static str, usize) = match two {
                    "==" => ("==", 2),
                    "!=" => ("!=", 2),
                    "<=" => ("<=", 2),
                    ">=" => (">=", 2),
                    "!~" => ("!~", 2),
                    "=~" => {
                        return Err(ConditionError {
                            offset: start,
                            message:
                                "unknown operator `=~`; a regular expression match is written `~`"
                                    .into(),
                        });
                    }
                    _ => match c {
                        b'<' => ("<", 1),
                        b'>' => (">", 1),
                        b'~' => ("~", 1),
                        b'=' => {
                            return Err(ConditionError {
                                offset: start,
                                message: "unknown operator `=`; to compare, write `==`".into(),
                            });
                        }
                        _ => {
                            return Err(ConditionError {
                                offset: start,
                                message: "unknown operator `!`; write `not`, `!=` or `!~`".into(),
                            });
                        }
                    },
                };
                tokens.push(Token {
                    kind: TokenKind::Op(op),
                    offset: start,
                });
                i += len;
            }
            b'&' | b'|' => {
                let word = if c == b'&' { "and" } else { "or" };
                return Err(ConditionError {
                    offset: start,
                    message: format!("unknown operator `{}`; write `{word}`", c as char),
                });
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit()
                        || matches!(bytes[i], b'.' | b'e' | b'E' | b'_')
                        || (matches!(bytes[i], b'-' | b'+') && matches!(bytes[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                let text = src[start..i].replace('_', "");
                let Some(n) = parse_number(&text) else {
                    return Err(ConditionError {
                        offset: start,
                        message: format!("`{}` is not a number", &src[start..i]),
                    });
                };
                tokens.push(Token {
                    kind: TokenKind::Number(n),
                    offset: start,
                });
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.'))
                {
                    i += 1;
                }
                tokens.push(Token {
                    kind: TokenKind::Ident(src[start..i].to_string()),
                    offset: start,
                });
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(ConditionError {
                    offset: start,
                    message: format!("unexpected character `{ch}`"),
                });
            }
        }
    }
    Ok(tokens)
}

// ---------------------------------------------------------------- parser

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    /// Current nesting of `not` and parentheses.
    depth: usize,
    /// `and`/`or` joins so far.
    terms: usize,
    lists: &'a BTreeMap<String, Vec<String>>,
    end: usize,
}

const KEYWORDS: &[&str] = &["and", "or", "not", "in", "exists"];

/// How deep `not` and parentheses may nest.
const MAX_DEPTH: usize = 64;

/// How many parts `and`/`or` may join in one condition.
const MAX_TERMS: usize = 256;

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let tok = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        tok
    }

    fn offset_here(&self) -> usize {
        self.peek().map(|t| t.offset).unwrap_or(self.end)
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: TokenKind::Ident(w), .. }) if w.eq_ignore_ascii_case(word))
    }

    /// Counts one more `and`/`or` term; conditions are trees walked recursively,
    /// so their size is bounded like their depth.
    fn one_more_term(&mut self) -> Result<(), ConditionError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(ConditionError {
                offset: self.offset_here(),
                message: format!(
                    "this condition joins more than {MAX_TERMS} parts with `and`/`or`; use a named list with `in` instead"
                ),
            });
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.and()?;
        while self.is_keyword("or") {
            self.one_more_term()?;
            self.pos += 1;
            let right = self.and()?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.unary()?;
        while self.is_keyword("and") {
            self.one_more_term()?;
            self.pos += 1;
            let right = self.unary()?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Condition, ConditionError> {
        // Parsing and evaluating recurse; a bound keeps a pathological condition
        // from overflowing the stack (no real rule nests anywhere near this deep).
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ConditionError {
                offset: self.offset_here(),
                message: format!(
                    "this condition nests `not` and parentheses more than {MAX_DEPTH} deep; split it into simpler parts"
                ),
            });
        }
        let result = if self.is_keyword("not") {
            self.pos += 1;
            self.unary().map(|c| Condition::Not(Box::new(c)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        result
    }

    fn expect(&mut self, want: TokenKind, what: &str) -> Result<(), ConditionError> {
        let offset = self.offset_here();
        match self.next() {
            Some(tok) if tok.kind == want => Ok(()),
            Some(tok) => Err(ConditionError {
                offset,
                message: format!("expected {what}, found {}", tok.kind.describe()),
            }),
            None => Err(ConditionError {
                offset,
                message: format!("expected {what}, but the condition ends here"),
            }),
        }
    }

    fn primary(&mut self) -> Result<Condition, ConditionError> {
        let offset = self.offset_here();
        let Some(tok) = self.next() else {
            return Err(ConditionError {
                offset,
                message: "the condition ends too early; something is missing after the last `and`, `or` or `not`".into(),
            });
        };
        match tok.kind {
            TokenKind::LParen => {
                let inner = self.or()?;
                self.expect(TokenKind::RParen, "`)` to close the `(`")?;
                Ok(inner)
            }
            TokenKind::Ident(word) if word.eq_ignore_ascii_case("exists") => {
                self.expect(TokenKind::LParen, "`(` after `exists`")?;
                let field = self.field_name()?;
                self.expect(TokenKind::RParen, "`)` after the field name")?;
                Ok(Condition::Exists(FieldRef::new(field)))
            }
            TokenKind::Ident(word) if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) => {
                Err(ConditionError {
                    offset,
                    message: format!("expected a field name, found the keyword `{word}`"),
                })
            }
            TokenKind::Ident(field) => self.comparison(field),
            other => Err(ConditionError {
                offset,
                message: format!(
                    "expected a field name, found {}; a comparison starts with the field, like `district == \"Bolton\"`",
                    other.describe()
                ),
            }),
        }
    }

    fn field_name(&mut self) -> Result<String, ConditionError> {
        let offset = self.offset_here();
        match self.next() {
            Some(Token {
                kind: TokenKind::Ident(name),
                ..
            }) => Ok(name),
            Some(tok) => Err(ConditionError {
                offset,
                message: format!("expected a field name, found {}", tok.kind.describe()),
            }),
            None => Err(ConditionError {
                offset,
                message: "expected a field name".into(),
            }),
        }
    }

    fn comparison(&mut self, field: String) -> Result<Condition, ConditionError> {
        let op_offset = self.offset_here();
        let Some(tok) = self.next() else {
            return Err(ConditionError {
                offset: op_offset,
                message: format!(
                    "`{field}` needs a comparison after it, like `{field} == \"value\"` or `{field} in some_list`"
                ),
            });
        };
        match tok.kind {
            TokenKind::Op(op) => {
                let operand_offset = self.offset_here();
                let operand = self.scalar_operand(op)?;
                match op {
                    "~" | "!~" => {
                        let Literal::Text(_) = &operand else {
                            return Err(ConditionError {
                                offset: operand_offset,
                                message: "`~` needs a regular expression in quotes".into(),
                            });
                        };
                        // Re-read the unlowered text: regexes keep their case.
                        let pattern = match &self.tokens[self.pos - 1].kind {
                            TokenKind::Str(s) => s.clone(),
                            _ => String::new(),
                        };
                        let regex = Regex::new(&pattern).map_err(|e| ConditionError {
                            offset: operand_offset,
                            message: format!("bad regular expression: {}", regex_error_summary(&e)),
                        })?;
                        Ok(Condition::Regex {
                            field: FieldRef::new(field),
                            regex,
                            negated: op == "!~",
                        })
                    }
                    _ => {
                        let op = match op {
                            "==" => CompareOp::Eq,
                            "!=" => CompareOp::Ne,
                            "<" => CompareOp::Lt,
                            "<=" => CompareOp::Le,
                            ">" => CompareOp::Gt,
                            _ => CompareOp::Ge,
                        };
                        Ok(Condition::Compare {
                            field: FieldRef::new(field),
                            op,
                            literal: operand,
                        })
                    }
                }
            }
            TokenKind::Ident(word) if word.eq_ignore_ascii_case("in") => {
                let set = self.list_operand()?;
                Ok(Condition::In {
                    field: FieldRef::new(field),
                    set,
                    negated: false,
                })
            }
            TokenKind::Ident(word) if word.eq_ignore_ascii_case("not") && self.is_keyword("in") => {
                self.pos += 1;
                let set = self.list_operand()?;
                Ok(Condition::In {
                    field: FieldRef::new(field),
                    set,
                    negated: true,
                })
            }
            other => Err(ConditionError {
                offset: op_offset,
                message: format!(
                    "unknown operator {} after `{field}`; use one of == != < <= > >= ~ !~ in",
                    other.describe()
                ),
            }),
        }
    }

    fn scalar_operand(&mut self, op: &str) -> Result<Literal, ConditionError> {
        let offset = self.offset_here();
        match self.next() {
            Some(Token {
                kind: TokenKind::Number(n),
                ..
            }) => Ok(Literal::Number(n)),
            Some(Token {
                kind: TokenKind::Str(s),
                ..
            }) => {
                let ordering = matches!(op, "<" | "<=" | ">" | ">=");
                if ordering && let Ok(t) = s.trim().parse::<Timestamp>() {
                    return Ok(Literal::Time(t));
                }
                // `amount > "200"` means the number: ordering text by its characters would put "1000" before "200".
                if ordering && let Some(n) = parse_number(&s) {
                    return Ok(Literal::Number(n));
                }
                Ok(Literal::Text(s.trim().to_lowercase()))
            }
            Some(Token {
                kind: TokenKind::Ident(word),
                ..
            }) => Err(ConditionError {
                offset,
                message: format!("`{word}` after `{op}` needs quotes if it is text: \"{word}\""),
            }),
            Some(tok) => Err(ConditionError {
                offset,
                message: format!(
                    "expected a value after `{op}`, found {}",
                    tok.kind.describe()
                ),
            }),
            None => Err(ConditionError {
                offset,
                message: format!("expected a value after `{op}`, but the condition ends here"),
            }),
        }
    }

    fn list_operand(&mut self) -> Result<TermSet, ConditionError> {
        let offset = self.offset_here();
        match self.next() {
            Some(Token {
                kind: TokenKind::LBracket,
                ..
            }) => {
                let mut items = Vec::new();
                loop {
                    let item_offset = self.offset_here();
                    match self.next() {
                        Some(Token {
                            kind: TokenKind::RBracket,
                            ..
                        }) if items.is_empty() => break,
                        Some(Token {
                            kind: TokenKind::Str(s),
                            ..
                        }) => items.push(s),
                        Some(Token {
                            kind: TokenKind::Number(n),
                            ..
                        }) => items.push(n.to_string()),
                        Some(tok) => {
                            return Err(ConditionError {
                                offset: item_offset,
                                message: format!(
                                    "a list holds quoted values, found {}",
                                    tok.kind.describe()
                                ),
                            });
                        }
                        None => {
                            return Err(ConditionError {
                                offset: item_offset,
                                message: "this list has no closing `]`".into(),
                            });
                        }
                    }
                    let sep_offset = self.offset_here();
                    match self.next() {
                        Some(Token {
                            kind: TokenKind::Comma,
                            ..
                        }) => continue,
                        Some(Token {
                            kind: TokenKind::RBracket,
                            ..
                        }) => break,
                        _ => {
                            return Err(ConditionError {
                                offset: sep_offset,
                                message: "expected `,` or `]` in the list".into(),
                            });
                        }
                    }
                }
                Ok(TermSet::new(items.iter().map(String::as_str)))
            }
            Some(Token {
                kind: TokenKind::Ident(name),
                ..
            }) => match self.lists.get(&name) {
                Some(items) => Ok(TermSet::new(items.iter().map(String::as_str))),
                None => {
                    let hint =
                        crate::diagnostic::suggest(&name, self.lists.keys().map(String::as_str))
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_else(|| {
                                if self.lists.is_empty() {
                                    "; define it under [lists] in a rule file (lists are shared by all rule files)".into()
                                } else {
                                    format!(
                                        "; the lists are: {}",
                                        self.lists.keys().cloned().collect::<Vec<_>>().join(", ")
                                    )
                                }
                            });
                    Err(ConditionError {
                        offset,
                        message: format!("unknown list `{name}`{hint}"),
                    })
                }
            },
            Some(tok) => Err(ConditionError {
                offset,
                message: format!(
                    "`in` needs a list, like [\"a\", \"b\"] or a name from [lists]; found {}",
                    tok.kind.describe()
                ),
            }),
            None => Err(ConditionError {
                offset,
                message: "`in` needs a list, like [\"a\", \"b\"] or a name from [lists]".into(),
            }),
        }
    }
}

/// The last line of a regex error is the useful part; the rest repeats the pattern.
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text)
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// Convenience for tests and the rule engine: does `value` belong to a normalised term?
pub fn term_matches(value: &str, normalised: &str) -> bool {
    terms_equal(value, normalised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Value;

    fn event(fields: &[(&str, Value)]) -> Event {
        Event {
            feed: "drug_testing".into(),
            record_id: None,
            time: Timestamp::UNIX_EPOCH,
            fields: fields.iter().map(|(k, v)| (*k, v.clone())).collect(),
        }
    }

    fn lists() -> BTreeMap<String, Vec<String>> {
        let mut l = BTreeMap::new();
        l.insert(
            "nitazenes".to_string(),
            vec![
                "isotonitazene".to_string(),
                "N-desethyl isotonitazene".to_string(),
            ],
        );
        l
    }

    fn check(src: &str, ev: &Event) -> bool {
        let cond = Condition::parse(src, &lists()).unwrap_or_else(|e| panic!("{src}: {e:?}"));
        let mut scratch = EvalScratch::default();
        scratch.next_event();
        cond.matches(ev, &mut scratch)
    }

    #[test]
    fn a_test_shared_by_rules_is_answered_once_per_event() {
        let mut a =
            Condition::parse(r#"form == "tablet" and district == "Bolton""#, &lists()).unwrap();
        let mut b = Condition::parse(r#"form == "tablet""#, &lists()).unwrap();
        let mut c = Condition::parse(r#"form == "TABLET""#, &lists()).unwrap();
        let mut index = ConditionIndex::default();
        a.index_into(&mut index);
        b.index_into(&mut index);
        c.index_into(&mut index);
        assert_eq!(
            index.atoms.len(),
            2,
            "`form == \"tablet\"` is one test, however written"
        );
        let slots = index.into_slots();
        let tablet = event(&[("form", text("Tablet")), ("district", text("Bolton"))]);
        let powder = event(&[("form", text("powder")), ("district", text("Bolton"))]);
        let mut scratch = EvalScratch::default();
        for (ev, want) in [(&tablet, true), (&powder, false), (&tablet, true)] {
            scratch.bind(ev, &slots);
            assert_eq!(a.matches(ev, &mut scratch), want);
            assert_eq!(b.matches(ev, &mut scratch), want);
            assert_eq!(c.matches(ev, &mut scratch), want);
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn list_membership_ignores_case_spaces_and_hyphens() {
        let ev = event(&[(
            "substances_major",
            Value::List(vec!["Cocaine".into(), "N-Desethylisotonitazene".into()]),
        )]);
        assert!(check("substances_major in nitazenes", &ev));
        assert!(!check("substances_major not in nitazenes", &ev));
        assert!(check("substances_major in [\"cocaine\"]", &ev));
        // `!=` on a list: no element equals (like `not in`).
        assert!(!check("substances_major != \"cocaine\"", &ev));
        assert!(check("substances_major != \"heroin\"", &ev));
        assert!(!check("substances_major in [\"heroin\", 'ketamine']", &ev));
    }

    #[test]
    fn missing_fields_match_nothing() {
        let ev = event(&[("district", text("Bolton"))]);
        assert!(!check("notes == \"x\"", &ev));
        assert!(!check("notes != \"x\"", &ev));
        assert!(!check("notes in nitazenes", &ev));
        assert!(check("not exists(notes)", &ev));
        assert!(check("exists(district)", &ev));
        let empty = event(&[("notes", text("  "))]);
        assert!(check("not exists(notes)", &empty));
    }

    #[test]
    fn comparisons_are_typed_by_the_literal() {
        let ev = event(&[
            ("amount", text("12.5")),
            ("district", text("Bolton ")),
            ("tested_at", text("2025-11-04T11:30:00Z")),
        ]);
        assert!(check("amount > 10", &ev));
        assert!(
            check("amount > \"9\"", &ev),
            "a quoted number orders as a number"
        );
        assert!(check("amount <= 12.5", &ev));
        assert!(!check("amount < 12.5", &ev));
        assert!(check("district == \"bolton\"", &ev));
        assert!(check("district != \"Bury\"", &ev));
        assert!(check("tested_at > \"2025-11-04T11:00:00Z\"", &ev));
        assert!(!check("tested_at >= \"2025-11-05T00:00:00Z\"", &ev));
        // A word compared with a number is not equal, and not ordered.
        assert!(check("district != 3", &ev));
        assert!(!check("district > 3", &ev));
    }

    #[test]
    fn regex_keeps_case_unless_asked() {
        let ev = event(&[("purchased_as", text("Oxycodone 80mg"))]);
        assert!(check("purchased_as ~ \"^Oxy\"", &ev));
        assert!(!check("purchased_as ~ \"^oxy\"", &ev));
        assert!(check("purchased_as ~ \"(?i)^oxy\"", &ev));
        assert!(check("purchased_as !~ \"heroin\"", &ev));
    }

    #[test]
    fn precedence_and_parentheses() {
        let ev = event(&[("a", text("1")), ("b", text("2"))]);
        assert!(check("a == 1 or a == 5 and b == 9", &ev));
        assert!(!check("(a == 1 or a == 5) and b == 9", &ev));
        assert!(check("not (a == 2) and not b == 3", &ev));
    }

    fn error(src: &str) -> ConditionError {
        Condition::parse(src, &lists()).expect_err(src)
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = error("district = \"Bolton\"");
        assert_eq!(e.offset, 9);
        assert!(e.message.contains("`==`"), "{}", e.message);

        let e = error("substances_major in nitazene");
        assert_eq!(e.offset, 20);
        assert!(
            e.message.contains("did you mean `nitazenes`"),
            "{}",
            e.message
        );

        let e = error("notes ~ \"(unclosed\"");
        assert_eq!(e.offset, 8);
        assert!(
            e.message.starts_with("bad regular expression"),
            "{}",
            e.message
        );

        let e = error("district == Bolton");
        assert!(e.message.contains("needs quotes"), "{}", e.message);

        let e = error("(a == 1");
        assert!(e.message.contains("`)`"), "{}", e.message);
        assert_eq!(e.offset, 7);

        let e = error("a == 1 b == 2");
        assert_eq!(e.offset, 7);

        let e = error("a == 1 && b == 2");
        assert!(e.message.contains("`and`"), "{}", e.message);

        let e = error("a == \"open");
        assert_eq!(e.offset, 5);

        let e = error("a like 3");
        assert!(e.message.contains("unknown operator"), "{}", e.message);
        assert_eq!(e.offset, 2);

        assert!(error("").message.contains("empty"));
        assert!(error("a == 1 and").message.contains("too early"));
    }

    #[test]
    fn fields_are_collected() {
        let cond = Condition::parse(
            "a == 1 and (exists(b) or c in nitazenes) and d ~ \"x\"",
            &lists(),
        )
        .unwrap();
        assert_eq!(cond.fields(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn term_matching_helper() {
        assert!(term_matches("Iso-Tonitazene", "isotonitazene"));
    }
}

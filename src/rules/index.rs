//! The rule prefilter: for each row, the rules whose `when` could be true.
//!
//! With a thousand rules, most of a row's time went into conditions that were
//! false on their first test. This index is compiled once per [`RuleSet`] and
//! answers, per row, which rules of the row's feed are worth evaluating:
//!
//! - From each rule's condition it derives *necessary* conditions: clauses
//!   that all hold whenever the condition does, each a set of atoms one of
//!   which is true. The atoms are tests it can answer for every rule at once:
//!   `field == "text"` and `field == number` (a value → rules map per field),
//!   `field in list` (a normalised term → rules map), `field ~ /re/` (one
//!   [`RegexSet`] per field), `exists(field)`. Each conjunct of an `and` gives
//!   its clauses; an `or` gives one, the union of one clause per branch (every
//!   branch must have one); `not`, `!=`, `!~`, `not in` and orderings give
//!   none. A rule without a clause is *always evaluated*.
//! - Per row, the candidates are the rules all of whose clauses an atom of the
//!   row satisfies, plus the always-evaluated rules, in the rule set's order;
//!   the engine then runs each candidate's full condition. A rule's cheapest
//!   clause (equality or list, then regex, then exists) marks the rule itself,
//!   the others a bit each that is checked only for the rules so marked: so
//!   `postcode_district in ["M1"] and substances_major in nitazenes`, written
//!   for each of many areas, is a candidate only on a row of its area that
//!   holds a nitazene, whichever test is the rarer.
//!
//! **The invariant: the candidates include every rule whose `when` matches**,
//! so index plus evaluation gives exactly what evaluating every rule gives.
//! Each atom reads its field as the condition does ([`FieldRef::value`]: empty
//! is absent) and keys values by the same normalisation the evaluator applies
//! (`text_key_into` for `==`, [`normalise_into`] for `in`, the element's
//! `Display` for a number tested as text or by a regex; each element of a
//! list). `src/rules/index/tests.rs` checks this on the shipped and benchmark
//! rules and on random conditions over random rows.
//!
//! Feed values repeat (substances, forms, districts): [`IndexScratch`] keeps,
//! per field, a bounded memo from an element's exact text to every bit the
//! tables mark for it, so a repeated value costs one hash lookup. It is
//! frozen when full (entries, bytes) and switched off on a field whose values
//! rarely repeat (free text, ids); an entry is what the tables give for its
//! text, so the memo never changes an answer (the tests compare the two).
//!
//! Pure: no I/O. Only the `when` of observed rules is indexed; a deadline's
//! `until` is evaluated on every row of its feed, as before.
//!
//! [`RuleSet`]: crate::rules::RuleSet

use crate::event::{Scalar, Value, normalise_into, parse_number};
use crate::rules::condition::{
    CompareOp, Condition, EvalScratch, FieldRef, Literal, number_text_key_into, text_key_into,
};
use crate::rules::record::Record;
use crate::rules::{Rule, RuleKind};
use regex::{Regex, RegexSet};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(test)]
mod tests;

/// The index of a whole rule set: one [`FeedIndex`] per feed.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    /// FxHash: looked up once per row, by feed names the operator's config
    /// gives (not chosen by whoever writes a feed's files).
    feeds: FxHashMap<String, FeedIndex>,
    /// How many rules it was built over, to catch a rule set changed after it.
    rule_count: usize,
}

impl RuleIndex {
    /// Indexes the `when` of every rule the engine observes: every rule of a
    /// feed but its silence rules, which no record concerns.
    pub fn build(rules: &[Rule]) -> RuleIndex {
        let mut by_feed: FxHashMap<&str, Vec<(usize, &Condition)>> = FxHashMap::default();
        for (i, rule) in rules.iter().enumerate() {
            if !matches!(rule.kind, RuleKind::Silence { .. }) {
                by_feed.entry(&rule.feed).or_default().push((i, &rule.when));
            }
        }
        RuleIndex {
            feeds: by_feed
                .into_iter()
                .map(|(feed, conditions)| (feed.to_string(), FeedIndex::build(&conditions)))
                .collect(),
            rule_count: rules.len(),
        }
    }

    /// The index of one feed's rules, if it has any.
    pub fn feed(&self, feed: &str) -> Option<&FeedIndex> {
        self.feeds.get(feed)
    }

    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// (rules with an indexed test, rules always evaluated), over every feed.
    pub fn coverage(&self) -> (usize, usize) {
        self.feeds.values().fold((0, 0), |(indexed, always), f| {
            let a = f.always_evaluated();
            (indexed + f.rules.len() - a, always + a)
        })
    }
}

/// One feed's rules and the tables that select among them.
///
/// The tables mark bits: a rule's *first* clause (its cheapest) marks the
/// rule's own bit, at its position; each further clause marks a bit of its
/// own, after the rules' words. A rule is a candidate when its bit is set and
/// so are all its further clauses' (`others`).
#[derive(Debug, Clone, Default)]
pub struct FeedIndex {
    /// Tells apart the indexes a reused [`IndexScratch`] has memos for (0: empty).
    id: u64,
    /// The rules, by position: rule set indices in ascending order.
    rules: Vec<usize>,
    /// Positions always evaluated, as a bitset over `rules`.
    always: Vec<u64>,
    /// The bit of each rule's further clauses, by rule position.
    others: Vec<Box<[u32]>>,
    /// Words in the bitset: rules and further clauses.
    words: usize,
    /// The indexed tests, by field.
    fields: Vec<FieldTable>,
}

/// The indexed tests on one field. Each list holds the bits it marks (rule
/// positions, further clauses' bits).
#[derive(Debug, Clone)]
struct FieldTable {
    /// Reads the field as the conditions do (by slot when bound).
    field: FieldRef,
    /// `field == "text"`, by the literal (trimmed, lower-cased).
    text_eq: FxHashMap<Box<str>, Vec<u32>>,
    /// `field == number`, by [`number_key`].
    number_eq: FxHashMap<u64, Vec<u32>>,
    /// `field in list`, by normalised term.
    terms: FxHashMap<Box<str>, Vec<u32>>,
    /// `field ~ /re/`.
    regexes: Option<RegexTable>,
    /// `exists(field)`.
    exists: Vec<u32>,
}

/// The distinct regular expressions tested on one field.
#[derive(Debug, Clone)]
struct RegexTable {
    /// All of them at once; `None` if the set could not be built (its size
    /// limit), then each is run on its own: slower, the same answers.
    set: Option<RegexSet>,
    regexes: Vec<Regex>,
    /// Rule positions by pattern (`regexes`' order, which is the set's).
    rules: Vec<Vec<u32>>,
}

/// One test an index table can answer for many rules at once.
#[derive(Debug, Clone, Copy)]
enum Atom<'c> {
    TextEq(&'c FieldRef, &'c str),
    NumberEq(&'c FieldRef, f64),
    In(&'c FieldRef, &'c crate::rules::condition::TermSet),
    Regex(&'c FieldRef, &'c Regex),
    Exists(&'c FieldRef),
}

impl<'c> Atom<'c> {
    fn field(self) -> &'c FieldRef {
        match self {
            Atom::TextEq(f, _)
            | Atom::NumberEq(f, _)
            | Atom::In(f, _)
            | Atom::Regex(f, _)
            | Atom::Exists(f) => f,
        }
    }

    /// How many rows it is expected to let through, roughly: equality and list
    /// membership pick a few values, a regex more, `exists` most rows.
    fn cost(self) -> u32 {
        match self {
            Atom::TextEq(..) | Atom::NumberEq(..) | Atom::In(..) => 1,
            Atom::Regex(..) => 4,
            Atom::Exists(_) => 16,
        }
    }
}

/// Necessary conditions of `cond`, as clauses that must all hold when `cond`
/// does, each a set of atoms one of which holds (empty: nothing indexable is
/// known). Every conjunct of an `and` gives its clauses, so a rule can be
/// left out on any of them; an `or` is one clause, the union of one clause
/// from each branch (the cheapest), or none if a branch has none.
fn clauses(cond: &Condition) -> Vec<Vec<Atom<'_>>> {
    match cond {
        Condition::Always | Condition::Not(_) => Vec::new(),
        Condition::And(a, b) => {
            let mut all = clauses(a);
            all.extend(clauses(b));
            all
        }
        Condition::Or(a, b) => match (cheapest(clauses(a)), cheapest(clauses(b))) {
            (Some(mut x), Some(y)) => {
                x.extend(y);
                vec![x]
            }
            _ => Vec::new(),
        },
        Condition::Exists(field) => vec![vec![Atom::Exists(field)]],
        Condition::Compare {
            field,
            op: CompareOp::Eq,
            literal,
        } => match literal {
            Literal::Text(text) => vec![vec![Atom::TextEq(field, text)]],
            Literal::Number(n) => vec![vec![Atom::NumberEq(field, *n)]],
            Literal::Time(_) => Vec::new(),
        },
        Condition::Compare { .. } => Vec::new(),
        Condition::Regex {
            field,
            regex,
            negated: false,
        } => vec![vec![Atom::Regex(field, regex)]],
        Condition::In {
            field,
            set,
            negated: false,
        } => vec![vec![Atom::In(field, set)]],
        Condition::Regex { negated: true, .. } | Condition::In { negated: true, .. } => Vec::new(),
    }
}

/// The clause expected to let the fewest rows through (the first of equals).
fn cheapest(clauses: Vec<Vec<Atom<'_>>>) -> Option<Vec<Atom<'_>>> {
    let mut best: Option<Vec<Atom<'_>>> = None;
    for clause in clauses {
        if best
            .as_ref()
            .is_none_or(|b| total_cost(&clause) < total_cost(b))
        {
            best = Some(clause);
        }
    }
    best
}

fn total_cost(atoms: &[Atom<'_>]) -> u32 {
    atoms.iter().map(|a| a.cost()).sum()
}

/// A number as a map key: equal numbers (`0` and `-0`) have one key.
/// Literals and compared values are finite (`parse_number`), so bits compare like `==`.
fn number_key(n: f64) -> u64 {
    if n == 0.0 { 0 } else { n.to_bits() }
}

/// Per-row working memory of [`FeedIndex::candidates`], reused between rows,
/// and the memos of the feed index it was last used with.
#[derive(Debug)]
pub struct IndexScratch {
    bits: Vec<u64>,
    key: String,
    number_text: String,
    /// The bits one missed element marks, collected for its memo entry.
    found: Vec<u32>,
    /// The [`FeedIndex::id`] `memos` belong to.
    memo_for: u64,
    /// One memo per field table of that index.
    memos: Vec<FieldMemo>,
    limits: MemoLimits,
}

impl Default for IndexScratch {
    fn default() -> Self {
        IndexScratch::with_memo_limits(MemoLimits::DEFAULT)
    }
}

impl IndexScratch {
    /// A scratch whose memos keep to `limits` (tests make them fill up, or off).
    pub(crate) fn with_memo_limits(limits: MemoLimits) -> Self {
        IndexScratch {
            bits: Vec::new(),
            key: String::new(),
            number_text: String::new(),
            found: Vec::new(),
            memo_for: 0,
            memos: Vec::new(),
            limits,
        }
    }
}

/// How much one field's memo may hold, and when it gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoLimits {
    /// Entries per field; when full, the memo is frozen (looked up, not added to).
    pub entries: usize,
    /// Bytes of keys and bits per field (with a fixed overhead per entry).
    pub bytes: usize,
    /// Longer texts are never memoised (free text, not a code).
    pub key_bytes: usize,
    /// After this many lookups, a memo answering fewer than a quarter of
    /// them is switched off for the rest of the scratch's life.
    pub window: u32,
}

impl MemoLimits {
    /// A few thousand distinct codes per field, a quarter of a MiB at most:
    /// a drug-testing feed has a few hundred substances, forms, districts.
    pub(crate) const DEFAULT: MemoLimits = MemoLimits {
        entries: 4096,
        bytes: 256 * 1024,
        key_bytes: 96,
        window: 4096,
    };

    /// No memo at all: every element goes through the tables.
    #[cfg(test)]
    pub(crate) const OFF: MemoLimits = MemoLimits {
        entries: 0,
        bytes: 0,
        key_bytes: 0,
        window: 1,
    };
}

/// Per field: an element's exact text → every bit the tables mark for it
/// (`==` text and number, `in`, the regexes), so a repeated value costs one
/// hash lookup instead of normalising it twice, two map lookups and a regex
/// scan. Only text elements are memoised: a number's own tables are cheap.
///
/// The text is exactly the element, so the answer is a function of the key:
/// an entry gives the bits the tables would give, whatever the memo's state.
#[derive(Debug, Default)]
struct FieldMemo {
    /// foldhash, keyed at random per process, not FxHash: the keys are what
    /// a feed's files contain, and values crafted to collide under an unkeyed
    /// hash would make every lookup walk the memo (at worst its bounded
    /// entries; std's SipHash cost more than the memo saved). Keys are
    /// `CompactString`s: a code up to 24 bytes is compared in the bucket
    /// itself, without a pointer to follow.
    entries: HashMap<compact_str::CompactString, Box<[u32]>, foldhash::fast::RandomState>,
    bytes: usize,
    /// Lookups and hits in the current window (see [`MemoLimits::window`]).
    lookups: u32,
    hits: u32,
    /// Switched off: too few repeats to pay for itself.
    off: bool,
}

/// What an entry costs beyond its key and bits: the map's slot and two boxes' headers.
const ENTRY_OVERHEAD: usize = 48;

impl FieldMemo {
    /// The bits of `text`, if known. May switch the memo off (then `None`).
    fn get(&mut self, text: &str, limits: &MemoLimits) -> Option<&[u32]> {
        if self.lookups >= limits.window {
            if self.hits < self.lookups / 4 {
                // Its memory is given back; it is not asked again.
                *self = FieldMemo {
                    off: true,
                    ..FieldMemo::default()
                };
                return None;
            }
            self.lookups = 0;
            self.hits = 0;
        }
        self.lookups += 1;
        let found = self.entries.get(text);
        if found.is_some() {
            self.hits += 1;
        }
        found.map(|bits| &**bits)
    }

    fn insert(&mut self, text: &str, bits: &[u32], limits: &MemoLimits) {
        let size = text.len() + bits.len() * 4 + ENTRY_OVERHEAD;
        if self.entries.len() < limits.entries && self.bytes + size <= limits.bytes {
            self.bytes += size;
            self.entries
                .insert(compact_str::CompactString::from(text), bits.into());
        }
    }
}

static NEXT_INDEX_ID: AtomicU64 = AtomicU64::new(1);

impl FeedIndex {
    /// Indexes `conditions`: (rule set index, the rule's `when`), in ascending index order.
    pub fn build(conditions: &[(usize, &Condition)]) -> FeedIndex {
        let rule_words = conditions.len().div_ceil(64);
        // A rule set holds far fewer than 2^32 rules and clauses.
        let others_base = (rule_words * 64) as u32;
        let mut index = FeedIndex {
            id: NEXT_INDEX_ID.fetch_add(1, Ordering::Relaxed),
            rules: conditions.iter().map(|(i, _)| *i).collect(),
            always: vec![0; rule_words],
            others: Vec::with_capacity(conditions.len()),
            words: rule_words,
            fields: Vec::new(),
        };
        let mut next_bit = others_base;
        // Distinct regexes per field, by source text (same text, same regex).
        let mut patterns: Vec<Vec<(Regex, Vec<u32>)>> = Vec::new();
        for (position, (_, condition)) in conditions.iter().enumerate() {
            let position = position as u32;
            let mut found: Vec<Vec<Atom<'_>>> = clauses(condition)
                .into_iter()
                // An atom on a field without a slot cannot be read like the
                // condition reads it: that clause is not used (the others
                // still must hold).
                .filter(|clause| clause.iter().all(|a| a.field().slot().is_some()))
                .collect();
            // The cheapest first: it marks the rule's own bit, so most rows
            // leave the rule out without a look at its other clauses.
            if let Some(first) = (0..found.len()).min_by_key(|&c| total_cost(&found[c])) {
                found.swap(0, first);
            }
            if found.is_empty() {
                index.always[position as usize / 64] |= 1 << (position % 64);
            }
            let mut others = Vec::with_capacity(found.len().saturating_sub(1));
            for (c, clause) in found.into_iter().enumerate() {
                let bit = if c == 0 {
                    position
                } else {
                    next_bit += 1;
                    others.push(next_bit - 1);
                    next_bit - 1
                };
                for atom in clause {
                    index.add(atom, bit, &mut patterns);
                }
            }
            index.others.push(others.into_boxed_slice());
        }
        index.words = (next_bit as usize).div_ceil(64).max(rule_words);
        for (table, known) in index.fields.iter_mut().zip(patterns) {
            if known.is_empty() {
                continue;
            }
            let (regexes, rules): (Vec<Regex>, Vec<Vec<u32>>) = known.into_iter().unzip();
            table.regexes = Some(RegexTable {
                set: RegexSet::new(regexes.iter().map(Regex::as_str)).ok(),
                regexes,
                rules,
            });
        }
        index
    }

    /// Makes `atom` mark `bit`.
    fn add(&mut self, atom: Atom<'_>, bit: u32, patterns: &mut Vec<Vec<(Regex, Vec<u32>)>>) {
        let t = self.table(atom.field());
        if patterns.len() <= t {
            patterns.resize_with(t + 1, Vec::new);
        }
        let table = &mut self.fields[t];
        match atom {
            Atom::TextEq(_, text) => push_rule(table.text_eq.entry(text.into()).or_default(), bit),
            Atom::NumberEq(_, n) => {
                push_rule(table.number_eq.entry(number_key(n)).or_default(), bit)
            }
            Atom::In(_, set) => {
                for term in set.normalised_terms() {
                    push_rule(table.terms.entry(term.into()).or_default(), bit);
                }
            }
            Atom::Regex(_, regex) => {
                let known = &mut patterns[t];
                match known.iter_mut().find(|(r, _)| r.as_str() == regex.as_str()) {
                    Some((_, rules)) => push_rule(rules, bit),
                    None => known.push((regex.clone(), vec![bit])),
                }
            }
            Atom::Exists(_) => push_rule(&mut table.exists, bit),
        }
    }

    /// The table of `field`, made if new (fields are told apart by slot).
    fn table(&mut self, field: &FieldRef) -> usize {
        if let Some(t) = self
            .fields
            .iter()
            .position(|t| t.field.slot() == field.slot())
        {
            return t;
        }
        self.fields.push(FieldTable {
            field: field.clone(),
            text_eq: FxHashMap::default(),
            number_eq: FxHashMap::default(),
            terms: FxHashMap::default(),
            regexes: None,
            exists: Vec::new(),
        });
        self.fields.len() - 1
    }

    /// How many of the feed's rules are evaluated on every row.
    pub fn always_evaluated(&self) -> usize {
        self.always.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The rule set indices of the rules to evaluate on `event`, ascending,
    /// into `out`: every rule whose `when` can be true, and perhaps others.
    /// `scratch` must be bound to `event` (it is how fields are read).
    pub fn candidates<R: Record + ?Sized>(
        &self,
        event: &R,
        scratch: &EvalScratch,
        work: &mut IndexScratch,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        work.bits.clear();
        work.bits.extend_from_slice(&self.always);
        work.bits.resize(self.words, 0);
        if work.memo_for != self.id {
            work.memos.clear();
            work.memos
                .resize_with(self.fields.len(), FieldMemo::default);
            work.memo_for = self.id;
        }
        for (t, table) in self.fields.iter().enumerate() {
            if let Some(value) = table.field.value(event, scratch) {
                table.select(value, t, work);
            }
        }
        let bits = &work.bits;
        let is_set = |b: u32| bits[b as usize / 64] & (1 << (b % 64)) != 0;
        for (w, &word) in bits[..self.always.len()].iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let position = w * 64 + word.trailing_zeros() as usize;
                if self.others[position].iter().all(|&b| is_set(b)) {
                    out.push(self.rules[position]);
                }
                word &= word - 1;
            }
        }
    }
}

fn push_rule(bits: &mut Vec<u32>, bit: u32) {
    // A clause may name one value twice (`a == "x" or a == "X"`).
    if bits.last() != Some(&bit) {
        bits.push(bit);
    }
}

fn mark(bits: &mut [u64], marked: &[u32]) {
    for &p in marked {
        bits[p as usize / 64] |= 1 << (p % 64);
    }
}

impl FieldTable {
    /// Marks the rules the present `value` selects: an atom holds when any
    /// element of it does, as every test of a list field does. `t` is the
    /// table's position, for its memo in `work`.
    fn select(&self, value: &Value, t: usize, work: &mut IndexScratch) {
        let IndexScratch {
            bits,
            key,
            number_text,
            found,
            memos,
            limits,
            ..
        } = work;
        mark(bits, &self.exists);
        let memo = &mut memos[t];
        for element in value.elements() {
            match element {
                Scalar::Text(s) if !memo.off && s.len() <= limits.key_bytes => {
                    if let Some(marked) = memo.get(s, limits) {
                        mark(bits, marked);
                        continue;
                    }
                    found.clear();
                    self.select_element(element, key, number_text, &mut |m| {
                        found.extend_from_slice(m)
                    });
                    found.sort_unstable();
                    found.dedup();
                    mark(bits, found);
                    if !memo.off {
                        memo.insert(s, found, limits);
                    }
                }
                _ => self.select_element(element, key, number_text, &mut |m| mark(bits, m)),
            }
        }
    }

    /// Hands `marked` each list of bits one element selects.
    fn select_element(
        &self,
        element: Scalar<'_>,
        key: &mut String,
        number_text: &mut String,
        marked: &mut impl FnMut(&[u32]),
    ) {
        // What a regex or `==` on text sees of the element.
        let text: &str = match element {
            Scalar::Text(s) => s,
            Scalar::Number(n) => {
                number_text_key_into(n, number_text);
                number_text
            }
        };
        if !self.text_eq.is_empty() {
            match element {
                Scalar::Text(s) => text_key_into(s, key),
                Scalar::Number(_) => {
                    key.clear();
                    key.push_str(text);
                }
            }
            if let Some(rules) = self.text_eq.get(key.as_str()) {
                marked(rules);
            }
        }
        if !self.terms.is_empty() {
            normalise_into(text, key);
            if let Some(rules) = self.terms.get(key.as_str()) {
                marked(rules);
            }
        }
        if !self.number_eq.is_empty() {
            let number = match element {
                Scalar::Number(n) => Some(n),
                Scalar::Text(s) => parse_number(s),
            };
            if let Some(rules) = number.and_then(|n| self.number_eq.get(&number_key(n))) {
                marked(rules);
            }
        }
        if let Some(regexes) = &self.regexes {
            match (&regexes.set, &regexes.regexes[..]) {
                // One pattern: a plain match, without the set's per-call PatternSet.
                (_, [regex]) => {
                    if regex.is_match(text) {
                        marked(&regexes.rules[0]);
                    }
                }
                (Some(set), _) => {
                    for pattern in set.matches(text).iter() {
                        marked(&regexes.rules[pattern]);
                    }
                }
                (None, _) => {
                    for (regex, rules) in regexes.regexes.iter().zip(&regexes.rules) {
                        if regex.is_match(text) {
                            marked(rules);
                        }
                    }
                }
            }
        }
    }
}

//! The index's invariant, checked: index plus evaluation gives the rules that
//! evaluating every rule gives, on the shipped rules, the benchmark rules and
//! random conditions, over random rows; and the normalisation edge cases.

use super::*;
use crate::config::Config;
use crate::event::{Event, Fields, Value};
use crate::rules::RuleSet;
use crate::rules::condition::ConditionIndex;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// SplitMix64: a seeded generator, so a failure can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A word as a producer might have written it: other case, spaces, hyphens,
/// padding, Unicode look-alikes, a letter more.
fn mutate(rng: &mut Rng, word: &str) -> String {
    match rng.below(12) {
        0 | 1 => word.to_string(),
        2 => word.to_uppercase(),
        3 => word
            .chars()
            .map(|c| {
                if rng.chance(50) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
        4 => format!("  {word}\t"),
        5 => {
            let cut = word
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.below(word.chars().count().max(1)))
                .unwrap_or(0);
            format!(
                "{}{}{}",
                &word[..cut],
                rng.pick(&["-", " ", "_", ""]),
                &word[cut..]
            )
        }
        6 => word.replace([' ', '-'], ""),
        7 => format!("{word}{}", rng.pick(&["s", "x", "1", " "])),
        8 => word
            .replace('k', "\u{212A}")
            .replace('i', "İ")
            .replace('s', "ß"),
        9 => format!("{}{word}", rng.pick(&["N-", "x", " ", "Σ"])),
        10 => word.to_lowercase().replace('σ', "ς"),
        _ => rng
            .pick(&[
                "", " ", "-", "\u{a0}", "0", "-0", "3", " 3.0 ", "1e2", "12.5mg",
            ])
            .to_string(),
    }
}

/// Every quoted text in the rule files (literals, list members, patterns) and
/// the words of the patterns, as values rows are made from.
fn vocabulary(sources: &[String]) -> Vec<String> {
    let mut words = std::collections::BTreeSet::new();
    for text in sources {
        for (i, piece) in text.split('"').enumerate() {
            if i % 2 == 1 && piece.len() < 60 {
                words.insert(piece.replace('\\', ""));
                let bare = piece
                    .replace("(?i)", "")
                    .replace(['^', '$', '\\', '(', ')', '?', '*', '+', '[', ']'], "");
                for part in bare.split('|') {
                    words.insert(part.to_string());
                }
            }
        }
    }
    for n in [
        "0",
        "1",
        "3",
        "10",
        "20",
        "50",
        "80",
        "150",
        "250",
        "300",
        "2025-11-04T10:00:00Z",
    ] {
        words.insert(n.to_string());
    }
    words.into_iter().collect()
}

fn random_value(rng: &mut Rng, vocabulary: &[String], list: bool) -> Value {
    if list {
        let n = rng.below(4);
        return Value::List(
            (0..n)
                .map(|_| {
                    let word = rng.pick(vocabulary).clone();
                    mutate(rng, &word).into()
                })
                .collect(),
        );
    }
    if rng.chance(8) {
        return Value::Number(*rng.pick(&[0.0, -0.0, 1.0, 3.0, 12.5, 80.0, 250.0, 1e21]));
    }
    let word = rng.pick(vocabulary).clone();
    Value::Text(mutate(rng, &word).into())
}

fn random_event(
    rng: &mut Rng,
    feed: &str,
    fields: &[String],
    list_fields: &[String],
    vocabulary: &[String],
) -> Event {
    let mut pairs: Vec<(String, Value)> = Vec::new();
    for field in fields {
        if rng.chance(30) {
            continue;
        }
        let list = list_fields.contains(field);
        pairs.push((field.clone(), random_value(rng, vocabulary, list)));
    }
    Event {
        feed: feed.into(),
        record_id: None,
        time: Timestamp::UNIX_EPOCH,
        fields: pairs.into_iter().collect::<Fields>(),
    }
}

/// Rule positions whose condition matches `event`, evaluating each.
fn evaluate_all(
    conditions: &[(usize, &Condition)],
    event: &Event,
    slots: &Arc<[String]>,
    scratch: &mut EvalScratch,
) -> Vec<usize> {
    scratch.bind(event, slots);
    conditions
        .iter()
        .filter(|(_, c)| c.matches(event, scratch))
        .map(|(i, _)| *i)
        .collect()
}

/// What the engine does: the index's candidates, then each one's condition.
fn through_index(
    index: &FeedIndex,
    conditions: &[(usize, &Condition)],
    event: &Event,
    slots: &Arc<[String]>,
    scratch: &mut EvalScratch,
    work: &mut IndexScratch,
) -> (Vec<usize>, usize) {
    scratch.bind(event, slots);
    let mut candidates = Vec::new();
    index.candidates(event, scratch, work, &mut candidates);
    assert!(
        candidates.windows(2).all(|w| w[0] < w[1]),
        "candidates in rule order"
    );
    // The memo (whatever it holds, full or switched off) gives exactly the
    // candidates the tables give on their own.
    let mut uncached = Vec::new();
    index.candidates(
        event,
        scratch,
        &mut IndexScratch::with_memo_limits(MemoLimits::OFF),
        &mut uncached,
    );
    assert_eq!(candidates, uncached, "the memo changed the candidates");
    let by_index: HashMap<usize, &Condition> = conditions.iter().copied().collect();
    let matched = candidates
        .iter()
        .copied()
        .filter(|i| by_index[i].matches(event, scratch))
        .collect();
    (matched, candidates.len())
}

/// Runs `rows` random rows of every feed through both paths; returns the
/// mean share of the feed's rules that were candidates.
fn check_rule_set(
    set: &RuleSet,
    config: &Config,
    sources: &[String],
    seed: u64,
    rows: usize,
    limits: MemoLimits,
) -> f64 {
    let vocabulary = vocabulary(sources);
    let mut rng = Rng(seed);
    let mut shares = Vec::new();
    for feed in &config.feeds {
        let conditions: Vec<(usize, &Condition)> = set
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.feed == feed.name && !matches!(r.kind, RuleKind::Silence { .. }))
            .map(|(i, r)| (i, &r.when))
            .collect();
        let Some(index) = set.index().feed(&feed.name) else {
            assert!(
                conditions.is_empty(),
                "feed {} has rules but no index",
                feed.name
            );
            continue;
        };
        let mut fields: Vec<String> = feed.fields.clone().unwrap_or_default();
        fields.extend(set.field_slots.iter().cloned());
        fields.sort();
        fields.dedup();
        let list_fields: Vec<String> = feed.list_fields.keys().cloned().collect();
        let (mut full, mut indexed, mut work) = (
            EvalScratch::default(),
            EvalScratch::default(),
            IndexScratch::with_memo_limits(limits),
        );
        let (mut candidates, mut matched) = (0usize, 0usize);
        for row in 0..rows {
            let event = random_event(&mut rng, &feed.name, &fields, &list_fields, &vocabulary);
            let want = evaluate_all(&conditions, &event, &set.field_slots, &mut full);
            let (got, n) = through_index(
                index,
                &conditions,
                &event,
                &set.field_slots,
                &mut indexed,
                &mut work,
            );
            if got != want {
                let missed: Vec<&str> = want
                    .iter()
                    .filter(|i| !got.contains(i))
                    .map(|i| set.rules[*i].when_source.as_deref().unwrap_or(""))
                    .collect();
                panic!(
                    "seed {seed}, row {row} of {}: the index lost {missed:?}\nrow: {:?}",
                    feed.name, event.fields
                );
            }
            candidates += n;
            matched += want.len();
        }
        assert!(
            matched > 0,
            "feed {}: random rows matched no rule, the check shows nothing",
            feed.name
        );
        shares.push(candidates as f64 / (rows * conditions.len()) as f64);
    }
    shares.iter().sum::<f64>() / shares.len().max(1) as f64
}

/// A memo that fills up within a few rows (frozen), with some texts too long
/// for it, and a window short enough to switch it off on a varied field.
const TINY_MEMO: MemoLimits = MemoLimits {
    entries: 6,
    bytes: 400,
    key_bytes: 8,
    window: 16,
};

fn load(config_path: &Path, rule_files: &[PathBuf]) -> (Config, RuleSet, Vec<String>) {
    let config = Config::load(config_path).unwrap_or_else(|e| panic!("{e}"));
    let sources: Vec<(PathBuf, String)> = rule_files
        .iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let set = RuleSet::from_sources(&config, &sources).unwrap_or_else(|e| panic!("{e}"));
    let texts = sources.into_iter().map(|(_, t)| t).collect();
    (config, set, texts)
}

#[test]
fn the_shipped_rules_select_what_evaluating_all_selects() {
    let config = Config::load(&repo("config.example.toml")).unwrap();
    let set = RuleSet::load(&config).unwrap();
    let texts: Vec<String> = set
        .files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for seed in 1..=4 {
        check_rule_set(&set, &config, &texts, seed, 3_000, MemoLimits::DEFAULT);
    }
    check_rule_set(&set, &config, &texts, 5, 3_000, TINY_MEMO);
}

#[test]
fn the_replay_benchmark_rules_select_what_evaluating_all_selects() {
    let (config, set, texts) = load(
        &repo("bench/replay/config.toml"),
        &[
            repo("bench/replay/rules.toml"),
            repo("bench/stateful/rules.toml"),
        ],
    );
    for seed in 10..=13 {
        check_rule_set(&set, &config, &texts, seed, 3_000, MemoLimits::DEFAULT);
    }
    check_rule_set(&set, &config, &texts, 14, 3_000, TINY_MEMO);
}

#[test]
fn the_rule_scale_benchmark_rules_select_what_evaluating_all_selects_and_fewer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rules-1000.toml");
    let status = std::process::Command::new("python3")
        .arg(repo("bench/rule-scale/gen_rules.py"))
        .args(["1000"])
        .arg(&out)
        .status()
        .expect("python3 runs bench/rule-scale/gen_rules.py");
    assert!(status.success(), "gen_rules.py failed");
    let (config, set, texts) = load(&repo("bench/replay/config.toml"), &[out]);
    assert_eq!(set.rules.len(), 1000);
    let (indexed, always) = set.index().coverage();
    assert!(
        always > 0,
        "some generated rules ({always}) have no indexable test, as real ones do"
    );
    assert!(indexed > 800, "{indexed} of 1,000 rules indexed");
    let share = check_rule_set(&set, &config, &texts, 20, 2_000, MemoLimits::DEFAULT);
    assert!(
        share < 0.5,
        "on random rows {:.0} % of the rules were candidates",
        share * 100.0
    );
}

#[test]
fn the_national_rules_select_what_evaluating_all_selects_and_few() {
    // The 20 replay rules for each of 45 areas and 100 unindexable rules
    // (bench/rule-scale/gen_national.py): the area and the finding must both
    // hold for a copy to be a candidate.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("national-1000.toml");
    let status = std::process::Command::new("python3")
        .arg(repo("bench/rule-scale/gen_national.py"))
        .args(["1000"])
        .arg(&out)
        .status()
        .expect("python3 runs bench/rule-scale/gen_national.py");
    assert!(status.success(), "gen_national.py failed");
    let (config, set, texts) = load(&repo("bench/replay/config.toml"), &[out]);
    assert_eq!(set.rules.len(), 1000);
    assert_eq!(set.index().coverage(), (900, 100));
    for seed in 30..=31 {
        let share = check_rule_set(&set, &config, &texts, seed, 2_000, MemoLimits::DEFAULT);
        assert!(
            share < 0.12,
            "on random rows {:.1} % of the rules were candidates (10 % are always evaluated)",
            share * 100.0
        );
    }
}

// ------------------------------------------------------------ random conditions

const FIELDS: [&str; 4] = ["a", "b", "c", "n"];
const WORDS: [&str; 12] = [
    "x", "X ", "y-z", "yz", "y z", "", "ä", "Ä", "3", "3.0", "-0", "k",
];

fn random_operand(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("{}", rng.pick(&[0, 3, 10, -1])),
        _ => format!("\"{}\"", rng.pick(&WORDS)),
    }
}

fn random_leaf(rng: &mut Rng) -> String {
    let field = rng.pick(&FIELDS);
    match rng.below(11) {
        0 => format!("exists({field})"),
        1 => format!("not exists({field})"),
        2 | 3 => format!("{field} == {}", random_operand(rng)),
        4 => format!("{field} != {}", random_operand(rng)),
        5 => format!(
            "{field} {} {}",
            rng.pick(&["<", "<=", ">", ">="]),
            random_operand(rng)
        ),
        6 | 7 => {
            let list = match rng.below(3) {
                0 => "L1".to_string(),
                1 => "L2".to_string(),
                _ => format!(
                    "[{}]",
                    (0..rng.below(3))
                        .map(|_| format!("\"{}\"", rng.pick(&WORDS)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!(
                "{field} {} {list}",
                if rng.chance(20) { "not in" } else { "in" }
            )
        }
        _ => format!(
            "{field} {} \"{}\"",
            if rng.chance(20) { "!~" } else { "~" },
            rng.pick(&[
                "^x$", "(?i)^x", "y", "^$", "\\\\d", "z$", "(?i)Ä", "^3", "k|K"
            ])
        ),
    }
}

fn random_condition(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.chance(35) {
        return random_leaf(rng);
    }
    match rng.below(5) {
        0 => format!("not ({})", random_condition(rng, depth - 1)),
        1 | 2 => format!(
            "({}) and ({})",
            random_condition(rng, depth - 1),
            random_condition(rng, depth - 1)
        ),
        _ => format!(
            "({}) or ({})",
            random_condition(rng, depth - 1),
            random_condition(rng, depth - 1)
        ),
    }
}

fn random_lists() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("L1".to_string(), vec!["x".into(), "Y z".into(), "ä".into()]),
        ("L2".to_string(), vec!["y-z".into(), "3".into(), "-".into()]),
    ])
}

#[test]
fn random_conditions_over_random_rows_select_what_evaluating_all_selects() {
    let lists = random_lists();
    let vocabulary: Vec<String> = WORDS.iter().map(|w| w.to_string()).collect();
    let fields: Vec<String> = FIELDS.iter().chain(&["z"]).map(|f| f.to_string()).collect();
    let list_fields = vec!["c".to_string()];
    let mut matched = 0;
    for seed in 0..40u64 {
        let mut rng = Rng(seed);
        let sources: Vec<String> = (0..60).map(|_| random_condition(&mut rng, 3)).collect();
        let mut conditions: Vec<Condition> = sources
            .iter()
            .map(|s| Condition::parse(s, &lists).unwrap_or_else(|e| panic!("{s}: {e:?}")))
            .collect();
        let mut numbering = ConditionIndex::default();
        for c in &mut conditions {
            c.index_into(&mut numbering);
        }
        let slots = numbering.into_slots();
        let numbered: Vec<(usize, &Condition)> = conditions.iter().enumerate().collect();
        let index = FeedIndex::build(&numbered);
        let limits = [MemoLimits::DEFAULT, TINY_MEMO][seed as usize % 2];
        let (mut full, mut indexed, mut work) = (
            EvalScratch::default(),
            EvalScratch::default(),
            IndexScratch::with_memo_limits(limits),
        );
        for row in 0..300 {
            let event = random_event(&mut rng, "f", &fields, &list_fields, &vocabulary);
            let want = evaluate_all(&numbered, &event, &slots, &mut full);
            let (got, _) =
                through_index(&index, &numbered, &event, &slots, &mut indexed, &mut work);
            if got != want {
                let missed: Vec<&str> = want
                    .iter()
                    .filter(|i| !got.contains(i))
                    .map(|i| sources[*i].as_str())
                    .collect();
                panic!(
                    "seed {seed}, row {row}: lost {missed:?}\nrow: {:?}",
                    event.fields
                );
            }
            matched += want.len();
        }
    }
    assert!(
        matched > 10_000,
        "only {matched} matches: the check is too weak"
    );
}

// ------------------------------------------------------------ edge cases

/// For one rule: (whether it matches the row, whether the index offers it,
/// whether the index tests it at all rather than always evaluating it).
fn decide(when: &str, row: &[(&str, Value)]) -> (bool, bool, bool) {
    let mut cond = Condition::parse(when, &random_lists()).unwrap();
    let mut numbering = ConditionIndex::default();
    cond.index_into(&mut numbering);
    let slots = numbering.into_slots();
    let index = FeedIndex::build(&[(0, &cond)]);
    let event = Event {
        feed: "f".into(),
        record_id: None,
        time: Timestamp::UNIX_EPOCH,
        fields: row.iter().map(|(k, v)| (*k, v.clone())).collect(),
    };
    let mut scratch = EvalScratch::default();
    scratch.bind(&event, &slots);
    let mut out = Vec::new();
    index.candidates(&event, &scratch, &mut IndexScratch::default(), &mut out);
    let matches = cond.matches(&event, &mut scratch);
    (matches, out == [0], index.always_evaluated() == 0)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|s| (*s).into()).collect())
}

/// The rule is indexed, matches the row, and the index offers it.
#[track_caller]
fn selected(when: &str, row: &[(&str, Value)]) {
    assert_eq!(decide(when, row), (true, true, true), "{when} on {row:?}");
}

/// The rule is indexed, does not match the row, and the index leaves it out.
#[track_caller]
fn left_out(when: &str, row: &[(&str, Value)]) {
    assert_eq!(decide(when, row), (false, false, true), "{when} on {row:?}");
}

#[test]
fn equality_ignores_case_and_surrounding_space_like_the_condition() {
    selected(r#"d == "Bolton""#, &[("d", text("BOLTON"))]);
    selected(r#"d == "Bolton""#, &[("d", text("  bolton\t"))]);
    left_out(r#"d == "Bolton""#, &[("d", text("Bol ton"))]);
    left_out(r#"d == "Bolton""#, &[("d", text("Bolton-le-Moors"))]);
    // Unicode case: the Kelvin sign lower-cases to an ASCII k; a final sigma stays final.
    selected(r#"u == "k""#, &[("u", text("\u{212A}"))]);
    selected(r#"w == "ΟΔΟΣ""#, &[("w", text("οδος"))]);
    left_out(r#"w == "ΟΔΟΣ""#, &[("w", text("οδοσ"))]);
    selected(r#"w == "Ärzte""#, &[("w", text("ÄRZTE"))]);
}

#[test]
fn membership_ignores_case_spaces_and_hyphens_like_the_condition() {
    selected("s in L1", &[("s", text("y-Z"))]);
    selected("s in L1", &[("s", text("Ä"))]);
    left_out("s in L1", &[("s", text("yzz"))]);
    // `==` keeps hyphens and inner spaces; `in` does not.
    left_out(r#"s == "y z""#, &[("s", text("y-z"))]);
    selected(r#"s in ["y z"]"#, &[("s", text("y-z"))]);
}

#[test]
fn a_value_in_two_lists_selects_the_rules_of_both() {
    // "y z" is in L1 and "y-z" in L2: the same term.
    for when in [
        "s in L1",
        "s in L2",
        "s in L1 or t in L2",
        "t == 1 or s in L2",
    ] {
        selected(when, &[("s", text("Y-Z"))]);
    }
}

#[test]
fn list_fields_match_on_any_element() {
    selected("c in L1", &[("c", list(&["cocaine", "YZ"]))]);
    selected(r#"c == "cocaine""#, &[("c", list(&["YZ", " Cocaine "]))]);
    selected(r#"c ~ "^coc""#, &[("c", list(&["YZ", "cocaine"]))]);
    left_out("c in L1", &[("c", list(&["cocaine", "heroin"]))]);
    // An empty element is still an element: `== ""` and a list of "-" (normalised "") see it.
    selected(r#"c == """#, &[("c", list(&["x", ""]))]);
    selected("c in L2", &[("c", list(&["--"]))]);
    // An empty list, like empty text, is absent.
    left_out(r#"exists(c)"#, &[("c", list(&[]))]);
}

#[test]
fn regexes_keep_their_anchors_and_flags() {
    selected(r#"p ~ "(?i)^oxy""#, &[("p", text("OxyContin"))]);
    left_out(r#"p ~ "(?i)^oxy""#, &[("p", text(" oxy"))]);
    selected(r#"p ~ "^Oxy$""#, &[("p", text("Oxy"))]);
    left_out(r#"p ~ "^Oxy$""#, &[("p", text("oxy"))]);
    left_out(r#"p ~ "^Oxy$""#, &[("p", text("Oxy "))]);
    // Two rules' regexes on one field, one set.
    selected(r#"p ~ "a" or p ~ "(?i)B$""#, &[("p", text("xb"))]);
}

#[test]
fn numbers_equal_by_value_and_as_text_by_their_digits() {
    selected("n == 3", &[("n", text(" 3.0 "))]);
    selected("n == 3", &[("n", Value::Number(3.0))]);
    selected("n == 0", &[("n", text("-0"))]);
    left_out("n == 3", &[("n", text("3 mg"))]);
    // A JSON number compared with text is its digits as Rust prints them.
    selected(r#"n == "3""#, &[("n", Value::Number(3.0))]);
    left_out(r#"n == "3.0""#, &[("n", Value::Number(3.0))]);
    selected(r#"n == "3.0""#, &[("n", text("3.0"))]);
}

#[test]
fn empty_and_absent_fields_match_nothing_but_not_exists() {
    left_out(r#"a == """#, &[("a", text(""))]);
    left_out(r#"a == "x""#, &[("a", text("  "))]);
    left_out("exists(a)", &[("a", text(" "))]);
    // `not exists` has no indexable test: always evaluated, and true here.
    assert_eq!(
        decide("not exists(a)", &[("b", text("x"))]),
        (true, true, false)
    );
    assert_eq!(
        decide("exists(a) or not exists(a)", &[]),
        (true, true, false),
        "an `or` with a branch the index cannot test is always evaluated"
    );
}

#[test]
fn an_and_is_indexed_by_its_most_selective_test() {
    // `exists(a)` holds, `b == "x"` does not: the rule is left out on `b`.
    left_out(
        r#"exists(a) and b == "x""#,
        &[("a", text("1")), ("b", text("y"))],
    );
    left_out(
        r#"a ~ "." and b in L1"#,
        &[("a", text("1")), ("b", text("y"))],
    );
    // Every conjunct it can test must hold, whichever is the cheaper.
    left_out(
        r#"a in L1 and b == "x""#,
        &[("a", text("Y-Z")), ("b", text("y"))],
    );
    left_out(
        r#"a == "q" and b ~ "^x" and exists(c)"#,
        &[("a", text("q")), ("b", text("x")), ("d", text("1"))],
    );
    left_out(
        r#"(a == "q" or a == "r") and (b == "x" or c == "x")"#,
        &[("a", text("r")), ("b", text("y")), ("c", text("y"))],
    );
    selected(
        r#"(a == "q" or a == "r") and (b == "x" or c == "x") and exists(a)"#,
        &[("a", text("r")), ("b", text("y")), ("c", text("X"))],
    );
    // Ordering, `!=` and negations fall back to another conjunct, or to always.
    left_out(r#"a > 3 and b == "x""#, &[("a", text("5"))]);
    assert_eq!(
        decide(
            r#"a > 3 and b != "x""#,
            &[("a", text("5")), ("b", text("y"))]
        ),
        (true, true, false)
    );
    assert_eq!(
        decide(r#"not (b in L1)"#, &[("b", text("q"))]),
        (true, true, false)
    );
    assert_eq!(
        decide(r#"b !~ "q""#, &[("b", text("r"))]),
        (true, true, false)
    );
}

#[test]
fn the_engine_raises_the_same_alerts_through_the_index() {
    // The index in the engine: a rule left out on most rows, one always evaluated.
    let config = Config::parse(
        Path::new("/x/c.toml"),
        "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"f\"\ndir = \"in\"\n[[partner]]\nid = \"p\"\nemails = [\"p@example.org\"]\n",
    )
    .unwrap();
    let rules = r#"
[[rule]]
id = "bolton"
name = "Bolton"
feed = "f"
when = 'district == "Bolton"'
severity = "info"
notify = ["p"]

[[rule]]
id = "not-bury"
name = "Not Bury"
feed = "f"
when = 'district != "Bury"'
severity = "info"
notify = ["p"]
"#;
    let set = Arc::new(
        RuleSet::from_sources(&config, &[(PathBuf::from("r.toml"), rules.into())]).unwrap(),
    );
    assert_eq!(set.index().coverage(), (1, 1));
    assert_eq!(
        crate::report::check::index_coverage(&set),
        "rule index: 1 of 2 rule(s) looked up by value, 1 evaluated on every row (no `==`, `in`, `~` or `exists` test that must hold)",
        "what `earlywarn check` tells the rule writer"
    );
    let mut engine = crate::rules::engine::Engine::new(set, Default::default());
    let mut batch = crate::rules::engine::Batch::default();
    for district in ["BOLTON ", "Bury", "Salford"] {
        let event = Event {
            feed: "f".into(),
            record_id: None,
            time: Timestamp::UNIX_EPOCH,
            fields: [("district", text(district))].into(),
        };
        engine.observe(&mut batch, &event);
    }
    let outcome = engine.finish(batch, Timestamp::UNIX_EPOCH, "hash", "f.csv");
    let mut raised: Vec<(&str, u64)> = outcome
        .alerts
        .iter()
        .map(|a| (a.rule_id.as_str(), a.event_count))
        .collect();
    raised.sort();
    assert_eq!(raised, [("bolton", 1), ("not-bury", 2)]);
}

#[test]
fn the_memo_remembers_repeated_values_and_gives_up_on_varied_ones() {
    let mut cond = Condition::parse(r#"a in L1 or b ~ "y""#, &random_lists()).unwrap();
    let mut numbering = ConditionIndex::default();
    cond.index_into(&mut numbering);
    let slots = numbering.into_slots();
    let index = FeedIndex::build(&[(0, &cond)]);
    let limits = MemoLimits {
        entries: 100,
        bytes: 100_000,
        key_bytes: 32,
        window: 50,
    };
    let mut work = IndexScratch::with_memo_limits(limits);
    let mut scratch = EvalScratch::default();
    let mut out = Vec::new();
    for row in 0..200 {
        let event = Event {
            feed: "f".into(),
            record_id: None,
            time: Timestamp::UNIX_EPOCH,
            // `a` repeats three values; `b` never repeats.
            fields: [
                ("a", text(["x", "Y z", "q"][row % 3])),
                ("b", text(&format!("id-{row}"))),
            ]
            .into(),
        };
        scratch.bind(&event, &slots);
        index.candidates(&event, &scratch, &mut work, &mut out);
        assert_eq!(out.is_empty(), row % 3 == 2, "row {row}");
    }
    let a = index
        .fields
        .iter()
        .position(|t| t.field.name == "a")
        .unwrap();
    let b = index
        .fields
        .iter()
        .position(|t| t.field.name == "b")
        .unwrap();
    assert_eq!(work.memos[a].entries.len(), 3);
    assert!(!work.memos[a].off);
    assert!(
        work.memos[b].off,
        "a field that never repeats is switched off"
    );
    assert!(
        work.memos[b].entries.is_empty(),
        "and its memory given back"
    );
}

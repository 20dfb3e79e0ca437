//! Arbitrary rule-file text through `RuleSet::from_sources`; a set that loads is run through
//! the engine (observe, finish, tick), routing and rendering, as the daemon would.
//! A line `#---` splits the input into several rule files of one set.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    earlywarn_fuzz::check_rule_files(&text);
});

//! Arbitrary `when` text through `Condition::parse`; what parses is evaluated on fixed events.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    earlywarn_fuzz::check_condition(&source);
});

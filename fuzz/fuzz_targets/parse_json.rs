//! A feed file of format `json` through decode_bytes + parse, as the intake reads it.
//! The first byte picks the feed's settings (see `earlywarn_fuzz::FEED_VARIANTS`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    earlywarn_fuzz::parse_file("json", data);
});

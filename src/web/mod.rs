//! The web console (SPEC §9). Part D's placeholder: only the listener lives
//! here until the console's own `mod.rs` (state, router, run) is merged.

pub mod listener;

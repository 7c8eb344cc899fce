//! Request heads against httparse: the differential check of `tests/common/oracle.rs` (both
//! accept → identical; only we reject → the input breaks the rule we name; never a panic).
#![no_main]

#[path = "../../common/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));

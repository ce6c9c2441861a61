#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opendify_fuzz::think(data));

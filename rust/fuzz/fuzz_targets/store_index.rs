#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ssm_offset_core::fuzzing::store_index(data));

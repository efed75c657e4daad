//! Fuzzes the property check `skiff_core::fuzzing::check_names`; see that function for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_core::fuzzing::check_names(data));

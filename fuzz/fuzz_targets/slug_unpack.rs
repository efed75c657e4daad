//! Fuzzes the slug unpacker through `skiff_builder::fuzzing::check_slug_unpack`: a bare tar is
//! compressed before unpacking, input starting with the zstd magic is unpacked as it is.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_builder::fuzzing::check_slug_unpack(data));

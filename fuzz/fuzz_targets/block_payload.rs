#![no_main]
// See fuzz/src/block.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kestrel_fuzz::block::decode(data));

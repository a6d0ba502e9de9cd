#![no_main]
// See fuzz/src/consensus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kestrel_fuzz::consensus::run(data));

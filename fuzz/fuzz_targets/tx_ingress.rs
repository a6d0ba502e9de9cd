#![no_main]
// See fuzz/src/tx.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kestrel_fuzz::tx::ingress(data));

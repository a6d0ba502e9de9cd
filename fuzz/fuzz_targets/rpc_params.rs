#![no_main]
// See fuzz/src/rpc.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kestrel_fuzz::rpc::request(data));

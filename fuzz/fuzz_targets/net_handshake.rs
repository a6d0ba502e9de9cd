#![no_main]
// See fuzz/src/net.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kestrel_fuzz::net::handshake(data));

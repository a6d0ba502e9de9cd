//! What the fuzz targets run, one function per target: each `fuzz_targets/*.rs` is a one-line
//! call into here, so a rename in the node is fixed in one place. The checks are the node's own
//! code paths, fed arbitrary bytes; beyond "does not panic" each asserts what must hold for the
//! input it accepted (a decoded transaction re-encodes to the bytes that were sent, a decoded
//! frame to the bytes it took, the consensus machine never votes twice in a round, ...).

pub mod block;
pub mod consensus;
pub mod net;
pub mod rpc;
pub mod tx;

/// The validator's payload and wire decoding live in the `kestrel` binary crate (no library
/// target); the fuzz crate compiles the same source files rather than a copy of them.
#[path = "../../node/src/validator/payload.rs"]
#[allow(dead_code)]
pub mod payload;
#[path = "../../node/src/validator/wire.rs"]
#[allow(dead_code)]
pub mod wire;

//! Validator-to-validator networking on monoio (io_uring): transport, gossip and block sync.
//!
//! Empty until the multi-validator issue: the dev chain has one validator and nothing to send.
//! The crate exists now so the workspace shows the architecture and the dependency direction
//! (`node` → `net` → `consensus` types) is fixed from the start.

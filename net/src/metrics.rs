//! Metric names (`kestrel_net_<what>_<unit>`) and their help text. Per-peer series are labelled
//! with the peer's key: bounded by the validator set. Full nodes share one `peer` value
//! (`full_nodes`), since anyone can make a key.

use metrics::{describe_counter, describe_gauge};

pub(crate) const PEERS_CONNECTED: &str = "kestrel_net_peers_connected";
pub(crate) const RECEIVED_BYTES_TOTAL: &str = "kestrel_net_received_bytes_total";
pub(crate) const SENT_BYTES_TOTAL: &str = "kestrel_net_sent_bytes_total";
pub(crate) const OUTBOUND_QUEUE_DEPTH: &str = "kestrel_net_outbound_queue_depth";
pub(crate) const OUTBOUND_DROPPED_TOTAL: &str = "kestrel_net_outbound_dropped_total";
pub(crate) const HANDSHAKE_FAILURES_TOTAL: &str = "kestrel_net_handshake_failures_total";
pub(crate) const PROTOCOL_ERRORS_TOTAL: &str = "kestrel_net_protocol_errors_total";
pub(crate) const REPLACED_CONNECTIONS_TOTAL: &str = "kestrel_net_replaced_connections_total";
pub(crate) const DIAL_FAILURES_TOTAL: &str = "kestrel_net_dial_failures_total";
pub(crate) const PREAUTH_CONNECTIONS: &str = "kestrel_net_preauth_connections";
pub(crate) const PREAUTH_REJECTED_TOTAL: &str = "kestrel_net_preauth_rejected_total";
pub(crate) const FULL_NODES_CONNECTED: &str = "kestrel_net_full_nodes_connected";
/// The `peer` label of full nodes' series: all of them in one, since anyone can make a key.
pub(crate) const FULL_NODES_LABEL: &str = "full_nodes";

/// Registers help text with the installed recorder; call once after installing it.
pub fn describe_metrics() {
    describe_gauge!(
        PEERS_CONNECTED,
        "Validators with an authenticated connection"
    );
    describe_counter!(
        RECEIVED_BYTES_TOTAL,
        "Bytes read from a peer's connection, by peer"
    );
    describe_counter!(
        SENT_BYTES_TOTAL,
        "Bytes written to a peer's connection, by peer"
    );
    describe_gauge!(
        OUTBOUND_QUEUE_DEPTH,
        "Messages waiting to be sent to a peer, both lanes"
    );
    describe_counter!(
        OUTBOUND_DROPPED_TOTAL,
        "Outbound messages dropped because a peer's queue was full, by peer and kind"
    );
    describe_counter!(
        HANDSHAKE_FAILURES_TOTAL,
        "Accepted connections that failed the handshake, by reason (`timeout`: not finished within the handshake timeout)"
    );
    describe_counter!(
        PROTOCOL_ERRORS_TOTAL,
        "Connections closed for a bad frame after the handshake (or a full node over its limits), by reason and class"
    );
    describe_counter!(
        REPLACED_CONNECTIONS_TOTAL,
        "Connections replaced by a newer one from the same peer (it reconnected)"
    );
    describe_counter!(
        DIAL_FAILURES_TOTAL,
        "Outbound connection attempts that failed, by peer"
    );
    describe_gauge!(
        PREAUTH_CONNECTIONS,
        "Accepted connections still in their handshake, by pool (general, reserved for validators' addresses)"
    );
    describe_counter!(
        PREAUTH_REJECTED_TOTAL,
        "Accepted connections closed at once for want of a pre-authentication slot, by limit (per_ip, total)"
    );
    describe_gauge!(
        FULL_NODES_CONNECTED,
        "Full nodes (keys outside the validator set) with an authenticated connection"
    );
}

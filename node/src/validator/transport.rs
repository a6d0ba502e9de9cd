//! What the driver needs of the validator network, as a trait: the real network (monoio over
//! io_uring) for a chain of several validators, no peers at all for a chain of one (the dev
//! chain), and a scripted network in tests.

use alloy_rlp::Bytes;
use kestrel_net::{Kind, Network, NetworkHandle, PeerId};
use std::collections::BTreeSet;

pub trait Transport: Send {
    /// Queues `bytes` for one peer; a peer that is not connected loses it (consensus retries by
    /// timeouts and requests, not by the transport).
    fn send(&self, to: &PeerId, kind: Kind, bytes: Bytes);
    fn broadcast(&self, kind: Kind, bytes: Bytes);
    fn connected_peers(&self) -> BTreeSet<PeerId>;
}

/// The validator network; dropping it closes the connections and joins the network thread.
pub struct NetTransport {
    handle: NetworkHandle,
    _network: Network,
}

impl NetTransport {
    pub fn new(network: Network) -> Self {
        Self {
            handle: network.handle(),
            _network: network,
        }
    }
}

impl Transport for NetTransport {
    fn send(&self, to: &PeerId, kind: Kind, bytes: Bytes) {
        match self.handle.send(to, kind, bytes) {
            Ok(()) => {}
            // A message we built too large for a frame is a bug to see, not load to shed.
            Err(err @ kestrel_net::SendError::PayloadTooLarge { .. }) => {
                tracing::warn!(target: "node::validator", peer = %to, ?kind, %err, "send failed")
            }
            Err(err) => tracing::debug!(target: "node::validator", peer = %to, %err, "send failed"),
        }
    }

    fn broadcast(&self, kind: Kind, bytes: Bytes) {
        if let Err(err) = self.handle.broadcast(kind, bytes) {
            tracing::warn!(target: "node::validator", %err, "broadcast failed");
        }
    }

    fn connected_peers(&self) -> BTreeSet<PeerId> {
        self.handle.connected_peers()
    }
}

/// A validator set of one has nobody to talk to.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _: &PeerId, _: Kind, _: Bytes) {}

    fn broadcast(&self, _: Kind, _: Bytes) {}

    fn connected_peers(&self) -> BTreeSet<PeerId> {
        BTreeSet::new()
    }
}

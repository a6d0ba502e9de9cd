//! The simulated network's end at one validator: what the driver sends is queued in its outbox
//! for the simulation to deliver (late, twice or never); who counts as connected is what the
//! simulation says (not crashed, not across a partition).

use crate::validator::transport::Transport;
use alloy_rlp::Bytes;
use kestrel_net::{Kind, PeerId};
use parking_lot::Mutex;
use std::{collections::BTreeSet, sync::Arc};

/// A message as the driver sent it: to one peer, or to all (`None`).
pub struct Sent {
    pub to: Option<PeerId>,
    pub kind: Kind,
    pub bytes: Bytes,
}

/// Shared between the driver's transport and the simulation, which outlives the driver across
/// crashes.
#[derive(Clone, Default)]
pub struct Port {
    pub outbox: Arc<Mutex<Vec<Sent>>>,
    pub connected: Arc<Mutex<BTreeSet<PeerId>>>,
}

pub struct SimTransport(pub Port);

impl Transport for SimTransport {
    fn send(&self, to: &PeerId, kind: Kind, bytes: Bytes) {
        self.0.outbox.lock().push(Sent {
            to: Some(*to),
            kind,
            bytes,
        });
    }

    fn broadcast(&self, kind: Kind, bytes: Bytes) {
        self.0.outbox.lock().push(Sent {
            to: None,
            kind,
            bytes,
        });
    }

    fn connected_peers(&self) -> BTreeSet<PeerId> {
        self.0.connected.lock().clone()
    }
}

//! The simulated network's end at one validator: what the driver sends is queued in its outbox
//! for the simulation to deliver (late, twice or never); who counts as connected is what the
//! simulation says (not crashed, not across a partition). A lit fuse crashes the driver in the
//! middle of a step: after a number of sends, the next one unwinds (`Blown`) out of the driver,
//! so whatever the step would have done after it (a later send, a later write) never happens.

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
    /// Sends left before the driver crashes at the next one.
    pub fuse: Arc<Mutex<Option<u32>>>,
}

/// The panic payload of a blown fuse: a crash, not a bug.
pub struct Blown;

impl Port {
    fn burn(&self) {
        let mut fuse = self.fuse.lock();
        match fuse.as_mut() {
            Some(0) => {
                *fuse = None;
                drop(fuse);
                std::panic::panic_any(Blown);
            }
            Some(left) => *left -= 1,
            None => {}
        }
    }
}

pub struct SimTransport(pub Port);

impl Transport for SimTransport {
    fn send(&self, to: &PeerId, kind: Kind, bytes: Bytes) {
        self.0.burn();
        self.0.outbox.lock().push(Sent {
            to: Some(*to),
            kind,
            bytes,
        });
    }

    fn broadcast(&self, kind: Kind, bytes: Bytes) {
        self.0.burn();
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

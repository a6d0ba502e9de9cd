//! Where the driver reads the time: the wall clock in a node, a virtual clock the simulation
//! (`sim/`) moves forward. An enum rather than a trait object: the node's path is one branch.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// Milliseconds since the Unix epoch (`kestrel_types::now_ms`).
    #[default]
    Wall,
    /// Milliseconds set by whoever holds the other end (the simulation's event queue).
    #[cfg_attr(not(test), allow(dead_code))]
    Virtual(Arc<AtomicU64>),
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Wall => kestrel_types::now_ms(),
            Clock::Virtual(ms) => ms.load(Ordering::Acquire),
        }
    }
}

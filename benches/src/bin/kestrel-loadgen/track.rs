//! What happened to every transaction: when it was submitted, whether the node accepted it, when
//! it was seen in a block and when that block became final. Written from many tasks, lock-free.

use alloy_primitives::{B256, map::HashMap};
use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

pub const ACCEPTED: u8 = 1;
pub const REJECTED: u8 = 2;

/// Times are microseconds since `start`, plus one (0 means "not yet").
pub struct Tracker {
    pub start: Instant,
    pub index: HashMap<B256, u32>,
    pub hashes: Vec<B256>,
    pub submitted_us: Vec<AtomicU64>,
    pub outcome: Vec<AtomicU8>,
    pub included_us: Vec<AtomicU64>,
    /// Where the transaction was included: block number << 32 | index in the block (orders the
    /// included transactions as the chain executed them).
    pub position: Vec<AtomicU64>,
    pub finalized_us: Vec<AtomicU64>,
    pub counters: Counters,
    pub errors: Mutex<BTreeMap<String, u64>>,
}

#[derive(Default)]
pub struct Counters {
    pub submitted: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub included: AtomicU64,
    pub finalized: AtomicU64,
}

fn zeros<T: Default>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::default()).collect()
}

impl Tracker {
    pub fn new(hashes: &[B256]) -> Self {
        let n = hashes.len();
        Self {
            start: Instant::now(),
            index: hashes
                .iter()
                .enumerate()
                .map(|(i, h)| (*h, i as u32))
                .collect(),
            hashes: hashes.to_vec(),
            submitted_us: zeros(n),
            outcome: zeros(n),
            included_us: zeros(n),
            position: zeros(n),
            finalized_us: zeros(n),
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }

    pub fn len(&self) -> usize {
        self.outcome.len()
    }

    pub fn submitted(&self, i: u32, at_us: u64) {
        if self.submitted_us[i as usize].swap(at_us, Relaxed) == 0 {
            self.counters.submitted.fetch_add(1, Relaxed);
        }
    }

    pub fn accepted(&self, i: u32) {
        self.outcome[i as usize].store(ACCEPTED, Relaxed);
        self.counters.accepted.fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, i: u32, message: &str) {
        self.outcome[i as usize].store(REJECTED, Relaxed);
        self.counters.rejected.fetch_add(1, Relaxed);
        self.error(message);
    }

    pub fn error(&self, message: &str) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(message.to_string())
            .or_default() += 1;
    }

    /// Records that the transaction with `hash` was seen at `index` in block `block` at
    /// `at_us`; its index if it is one of ours and was not seen before.
    pub fn included(&self, hash: &B256, block: u64, index: usize, at_us: u64) -> Option<u32> {
        let i = *self.index.get(hash)?;
        if self.included_us[i as usize]
            .compare_exchange(0, at_us, Relaxed, Relaxed)
            .is_ok()
        {
            assert!(
                block < 1 << 32 && index < 1 << 32,
                "block {block} index {index}"
            );
            self.position[i as usize].store(block << 32 | index as u64, Relaxed);
            self.counters.included.fetch_add(1, Relaxed);
            return Some(i);
        }
        None
    }

    pub fn finalized(&self, i: u32, at_us: u64) {
        if self.finalized_us[i as usize]
            .compare_exchange(0, at_us, Relaxed, Relaxed)
            .is_ok()
        {
            self.counters.finalized.fetch_add(1, Relaxed);
        }
    }

    pub fn get(v: &[AtomicU64], i: usize) -> Option<u64> {
        match v[i].load(Relaxed) {
            0 => None,
            t => Some(t - 1),
        }
    }
}

//! The committed values of recently written accounts and storage slots, in memory: a read of a
//! hot account (a sender's nonce and balance, which ingress, the proposer and execution each
//! read for every transaction it sends) skips the address's keccak and MDBX's B-tree search,
//! ~1.3 µs and, under load, about 8 % of a validator's CPU (BENCHMARKS.md).
//!
//! Only block writes fill it ([`crate::BlockWriter::commit`]), with the values they commit, each
//! tagged with the write transaction's MDBX id. A reader is an MDBX read transaction whose id is
//! that of the last commit it sees; it takes a cached value only if it was tagged at or before
//! that id. Every write of a key replaces its cached value (never an older one left behind
//! beside it), so the newest value tagged at or before the reader's id is the one its snapshot
//! holds, and a value tagged later means the key changed since: the reader goes to MDBX.
//! The values go in while MDBX commits, on another core: from before the commit until they are
//! all in, a reader of that commit or a later one reads MDBX (`applying`), since it could find a
//! value the commit replaced. A failed commit empties the cache (MDBX gives the next write
//! transaction the failed one's id). State written otherwise than by blocks (genesis, a state
//! sync's restore) empties it too.
//!
//! Two generations a shard bound its size: when a shard's current generation has had its share
//! of keys written, a new one begins and the values last written before the current one are
//! dropped. What stays is what blocks wrote lately.

use alloy_primitives::{Address, U256, map::HashMap};
use kestrel_types::AccountInfo;
use parking_lot::RwLock;
use std::{
    hash::Hash,
    sync::atomic::{AtomicU64, Ordering},
};

/// Shards of each map: the lock a lookup takes is its shard's, shared with few other keys.
const SHARDS: usize = 64;

/// Accounts and slots kept, each (two generations of half as many): up to about 125 MiB each
/// when full (~120-byte entries in hash tables up to half empty). A block of 10,000 transfers
/// writes some 20,000 accounts.
const STATE_CACHE_ENTRIES: usize = 1 << 19;

/// One value, the id of the write transaction that committed it, and the shard's generation it
/// was written in.
#[derive(Clone, Copy)]
struct Tagged<V> {
    value: V,
    since: u64,
    generation: u64,
}

/// One shard: the values of its keys (each key's newest only), and how its lookups went.
struct Shard<K, V> {
    map: HashMap<K, Tagged<V>>,
    /// Keys written in the current generation: at `young_max`, a new generation begins and the
    /// values last written before the current one are dropped.
    generation: u64,
    young: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<K: Hash + Eq, V: Copy> Shard<K, V> {
    /// The key's value, if a reader at `reader_id` may take it (`None`: nothing may be taken).
    fn get(&self, key: &K, reader_id: Option<u64>) -> Option<V> {
        let found = reader_id
            .and_then(|reader_id| (self.map.get(key)).filter(|tagged| tagged.since <= reader_id));
        let counter = match found {
            Some(_) => &self.hits,
            None => &self.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(|tagged| tagged.value)
    }

    fn put(&mut self, key: K, value: V, since: u64, young_max: usize) {
        let generation = self.generation;
        let tagged = Tagged {
            value,
            since,
            generation,
        };
        let before = self.map.insert(key, tagged);
        if before.is_none_or(|before| before.generation != generation) {
            self.young += 1;
        }
        if self.young >= young_max {
            self.map.retain(|_, tagged| tagged.generation == generation);
            self.generation += 1;
            self.young = 0;
        }
    }
}

/// One kind of state (accounts or slots) in shards.
struct Shards<K, V> {
    shards: Box<[RwLock<Shard<K, V>>]>,
    young_max: usize,
}

impl<K: Hash + Eq, V: Copy> Shards<K, V> {
    fn new(entries: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        map: HashMap::default(),
                        generation: 0,
                        young: 0,
                        hits: AtomicU64::new(0),
                        misses: AtomicU64::new(0),
                    })
                })
                .collect(),
            young_max: (entries / SHARDS / 2).max(1),
        }
    }

    fn get(&self, shard: usize, key: &K, reader_id: Option<u64>) -> Option<V> {
        self.shards[shard].read().get(key, reader_id)
    }

    fn put(&self, shard: usize, key: K, value: V, since: u64) {
        self.shards[shard]
            .write()
            .put(key, value, since, self.young_max);
    }

    fn clear(&self) {
        for shard in &*self.shards {
            let mut shard = shard.write();
            shard.map.clear();
            shard.young = 0;
        }
    }

    /// Entries, hits and misses.
    fn counts(&self) -> (usize, u64, u64) {
        self.shards
            .iter()
            .fold((0, 0, 0), |(len, hits, misses), shard| {
                let shard = shard.read();
                (
                    len + shard.map.len(),
                    hits + shard.hits.load(Ordering::Relaxed),
                    misses + shard.misses.load(Ordering::Relaxed),
                )
            })
    }
}

/// The shard of an address, or of a slot (`mix` its low limb): addresses are hashes' tails, but
/// tests and genesis files use small sequential ones, so the bytes at both ends are mixed; a
/// contract's slots (a token's balances) spread over all shards.
fn shard_of(address: &Address, mix: u64) -> usize {
    let head = u64::from_le_bytes(address[..8].try_into().expect("8 bytes"));
    let tail = u64::from_le_bytes(address[12..].try_into().expect("8 bytes"));
    ((head ^ tail ^ mix).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

fn slot_shard(address: &Address, slot: U256) -> usize {
    let limbs = slot.as_limbs();
    shard_of(address, limbs[0] ^ limbs[1] ^ limbs[2] ^ limbs[3])
}

/// One write a block commits, as the cache takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheWrite {
    /// The account's fields (`None`: it no longer exists).
    Account(Address, Option<AccountInfo>),
    Slot(Address, U256, U256),
    /// An account's slots are gone (the account deleted, or its storage wiped; only written for
    /// one that had any): every cached slot is dropped, as the cache does not index slots by
    /// account, and such wipes are rare (since Cancun only a contract created in the same
    /// transaction self-destructs, and an account's storage can only be wiped by one).
    WipedStorage,
}

/// What the cache holds and how its lookups went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lookups {
    pub account_hits: u64,
    pub account_misses: u64,
    pub slot_hits: u64,
    pub slot_misses: u64,
    pub accounts: usize,
    pub slots: usize,
}

/// See the module documentation.
pub struct StateCache {
    accounts: Shards<Address, Option<AccountInfo>>,
    slots: Shards<(Address, U256), U256>,
    /// The id of the write transaction whose values are going in (`u64::MAX`: none): readers at
    /// it or later take nothing from the cache meanwhile.
    applying: AtomicU64,
}

impl Default for StateCache {
    fn default() -> Self {
        Self::new(STATE_CACHE_ENTRIES)
    }
}

impl StateCache {
    /// A cache of at most `entries` accounts and as many slots.
    pub(crate) fn new(entries: usize) -> Self {
        Self {
            accounts: Shards::new(entries),
            slots: Shards::new(entries),
            applying: AtomicU64::new(u64::MAX),
        }
    }

    /// `address`'s fields as a reader whose snapshot is commit `reader_id` sees them (`Some(None)`:
    /// it does not exist), if cached; `None`: read MDBX.
    pub(crate) fn account(&self, address: &Address, reader_id: u64) -> Option<Option<AccountInfo>> {
        let reader_id = self.usable(reader_id);
        self.accounts.get(shard_of(address, 0), address, reader_id)
    }

    /// [`StateCache::account`] for a storage slot.
    pub(crate) fn slot(&self, address: &Address, slot: U256, reader_id: u64) -> Option<U256> {
        let reader_id = self.usable(reader_id);
        self.slots
            .get(slot_shard(address, slot), &(*address, slot), reader_id)
    }

    /// The newest commit whose values a reader at `reader_id` may take: its own, or none while
    /// the values of a commit it sees are going in.
    fn usable(&self, reader_id: u64) -> Option<u64> {
        (reader_id < self.applying.load(Ordering::Acquire)).then_some(reader_id)
    }

    /// Before the write transaction `txn_id` commits: its readers take nothing from the cache
    /// until [`StateCache::committed`]. Then [`StateCache::apply`], beside MDBX's commit.
    pub(crate) fn begin_apply(&self, txn_id: u64) {
        self.applying.store(txn_id, Ordering::SeqCst);
    }

    /// Takes the writes of the write transaction `txn_id`, which [`StateCache::begin_apply`]
    /// announced.
    pub(crate) fn apply(&self, txn_id: u64, writes: &[CacheWrite]) {
        for write in writes {
            match *write {
                CacheWrite::Account(address, info) => {
                    self.accounts
                        .put(shard_of(&address, 0), address, info, txn_id)
                }
                CacheWrite::Slot(address, slot, value) => {
                    self.slots
                        .put(slot_shard(&address, slot), (address, slot), value, txn_id)
                }
                CacheWrite::WipedStorage => self.slots.clear(),
            }
        }
    }

    /// After the commit whose writes [`StateCache::apply`] took: if it failed, they were never
    /// committed, and the next transaction gets the same id, so nothing cached may stay.
    pub(crate) fn committed(&self, ok: bool) {
        if !ok {
            self.clear();
        }
        self.applying.store(u64::MAX, Ordering::Release);
        let lookups = self.lookups();
        for (kind, hits, misses, entries) in [
            (
                "account",
                lookups.account_hits,
                lookups.account_misses,
                lookups.accounts,
            ),
            (
                "slot",
                lookups.slot_hits,
                lookups.slot_misses,
                lookups.slots,
            ),
        ] {
            metrics::counter!("kestrel_storage_state_cache_hits_total", "kind" => kind)
                .absolute(hits);
            metrics::counter!("kestrel_storage_state_cache_misses_total", "kind" => kind)
                .absolute(misses);
            metrics::gauge!("kestrel_storage_state_cache_entries", "kind" => kind)
                .set(entries as f64);
        }
    }

    pub(crate) fn lookups(&self) -> Lookups {
        let (accounts, account_hits, account_misses) = self.accounts.counts();
        let (slots, slot_hits, slot_misses) = self.slots.counts();
        Lookups {
            account_hits,
            account_misses,
            slot_hits,
            slot_misses,
            accounts,
            slots,
        }
    }

    /// Forgets everything: the state was written otherwise than by blocks.
    pub(crate) fn clear(&self) {
        self.accounts.clear();
        self.slots.clear();
    }
}

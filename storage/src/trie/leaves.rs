//! Leaves in key order with their values back to back: what a walk fed the hash builder
//! ([`Fed`](super::fed::Fed)), and what a subtree is hashed from
//! ([`Bottom`](super::bottom::Bottom)). One allocation per field however many leaves, kept
//! across blocks.

use alloy_primitives::B256;

#[derive(Default)]
pub(super) struct Leaves {
    keys: Vec<B256>,
    values: Vec<u8>,
    /// `ends[i]` is where the `i`th value ends in `values`.
    ends: Vec<usize>,
}

impl Leaves {
    /// Adds the next leaf (keys come in ascending order).
    pub fn push(&mut self, key: B256, value: &[u8]) {
        debug_assert!(self.keys.last().is_none_or(|last| *last < key));
        self.keys.push(key);
        self.values.extend_from_slice(value);
        self.ends.push(self.values.len());
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Forgets every leaf after the first `len`.
    pub fn truncate(&mut self, len: usize) {
        self.keys.truncate(len);
        self.ends.truncate(len);
        self.values.truncate(self.ends.last().copied().unwrap_or(0));
    }

    pub fn keys(&self) -> &[B256] {
        &self.keys
    }

    /// The `i`th leaf.
    pub fn leaf(&self, i: usize) -> (B256, &[u8]) {
        let start = i.checked_sub(1).map_or(0, |i| self.ends[i]);
        (self.keys[i], &self.values[start..self.ends[i]])
    }
}

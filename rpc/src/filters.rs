//! Poll filters, for clients without subscriptions (ethers and web3.py fall back to them over
//! HTTP): `eth_newFilter`, `eth_newBlockFilter` and `eth_newPendingTransactionFilter` install
//! one, `eth_getFilterChanges` returns what was committed (or admitted to the pool) since the
//! last poll, `eth_getFilterLogs` a log filter's whole range, and
//! `eth_uninstallFilter` removes one. As in geth, ids are random, a filter not polled for
//! [`FILTER_IDLE`] is dropped, and changes start at the block after the head at install.
//! Installed filters are bounded ([`FILTERS_MAX`]) and so is each poll ([`BLOCK_RANGE_MAX`]
//! blocks; the rest comes with the next poll).

use crate::{BLOCK_RANGE_MAX, chain::head, error::RpcError, logs};
use alloy_primitives::{B256, U128};
use alloy_rpc_types_eth::{Filter, FilterBlockOption, FilterChanges};
use kestrel_storage::ChainView;
use kestrel_types::BlockNumber;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Filters installed at once, over all clients.
pub const FILTERS_MAX: usize = 10_000;
/// geth's deadline: a filter nobody polls for this long is uninstalled.
pub const FILTER_IDLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Blocks,
    Logs(Box<Filter>),
    /// Hashes of transactions admitted to the pool (`TxPool::admitted_since`).
    PendingTxs,
}

struct Installed {
    kind: Kind,
    /// The first block the next poll returns; for `PendingTxs`, the admissions it has seen.
    next: u64,
    polled: Instant,
}

#[derive(Default)]
pub(crate) struct Filters {
    installed: Mutex<HashMap<U128, Installed>>,
}

impl Filters {
    /// Installs a filter whose first poll starts at `next` (the block after the head, or the
    /// pool's admission count); drops the idle ones first.
    pub(crate) fn install(&self, kind: Kind, next: u64) -> Result<U128, RpcError> {
        let now = Instant::now();
        let mut installed = self.installed.lock();
        installed.retain(|_, f| now.duration_since(f.polled) < FILTER_IDLE);
        if installed.len() >= FILTERS_MAX {
            return Err(RpcError::TooManyFilters(FILTERS_MAX));
        }
        let id = loop {
            let id = U128::from(rand::random::<u128>());
            if !installed.contains_key(&id) {
                break id;
            }
        };
        installed.insert(
            id,
            Installed {
                kind,
                next,
                polled: now,
            },
        );
        Ok(id)
    }

    pub(crate) fn uninstall(&self, id: U128) -> bool {
        self.installed.lock().remove(&id).is_some()
    }

    /// The filter and where its next poll starts; counts as a poll (keeps it alive).
    pub(crate) fn get(&self, id: U128) -> Result<(Kind, BlockNumber), RpcError> {
        let now = Instant::now();
        let mut installed = self.installed.lock();
        match installed.get_mut(&id) {
            Some(f) if now.duration_since(f.polled) < FILTER_IDLE => {
                f.polled = now;
                Ok((f.kind.clone(), f.next))
            }
            Some(_) => {
                installed.remove(&id);
                Err(RpcError::FilterNotFound)
            }
            None => Err(RpcError::FilterNotFound),
        }
    }

    /// A poll returned everything before `next`. Never moves back: two polls at once return
    /// overlapping changes at worst, never lose any.
    pub(crate) fn advance(&self, id: U128, next: BlockNumber) {
        if let Some(f) = self.installed.lock().get_mut(&id) {
            f.next = f.next.max(next);
        }
    }
}

/// What a block or log filter gained from block `next` on, and where the poll after it starts.
pub(crate) fn changes(
    chain: &impl ChainView,
    kind: &Kind,
    next: BlockNumber,
) -> Result<(FilterChanges, BlockNumber), RpcError> {
    let head = head(chain)?;
    if next > head {
        return Ok((FilterChanges::Empty, next));
    }
    let to = head.min(next + BLOCK_RANGE_MAX - 1);
    let changes = match kind {
        Kind::Blocks => FilterChanges::Hashes(
            (next..=to)
                .map(|n| chain.block_hash(n)?.ok_or(RpcError::HeaderNotFound))
                .collect::<Result<Vec<B256>, _>>()?,
        ),
        Kind::Logs(filter) => {
            // Within the filter's own range, if it has one.
            let (from, until) = match filter.block_option {
                FilterBlockOption::Range {
                    from_block,
                    to_block,
                } => (
                    from_block.and_then(|b| b.as_number()).unwrap_or(0),
                    to_block.and_then(|b| b.as_number()).unwrap_or(u64::MAX),
                ),
                FilterBlockOption::AtBlockHash(_) => (u64::MAX, 0),
            };
            let range = next.max(from)..=to.min(until);
            FilterChanges::Logs(logs::logs_in(chain, filter, range)?)
        }
        Kind::PendingTxs => {
            return Err(RpcError::Internal(
                "the pool answers pending-transaction filters".into(),
            ));
        }
    };
    Ok((changes, to + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BASE_FEE, FakeChain, TestTx, log, tx_1559};
    use alloy_primitives::{Address, TxKind};

    const TOKEN: Address = Address::with_last_byte(0x70);

    fn block_with_logs(chain: &mut FakeChain, nonce: u64, logs: usize) {
        let sender = Address::with_last_byte(1);
        chain.push_block(vec![TestTx {
            tx: tx_1559(sender, nonce, TxKind::Call(TOKEN), 2 * BASE_FEE as u128, 1),
            gas_used: 50_000,
            logs: (0..logs).map(|_| log(TOKEN, vec![])).collect(),
        }]);
    }

    #[test]
    fn each_block_and_log_comes_once_from_the_block_after_install() {
        let mut chain = FakeChain::new();
        block_with_logs(&mut chain, 0, 1);
        let filters = Filters::default();
        let head = head(&chain).unwrap();
        let blocks = filters.install(Kind::Blocks, head + 1).unwrap();
        let logs = filters
            .install(Kind::Logs(Box::default()), head + 1)
            .unwrap();
        let poll = |chain: &FakeChain, id| {
            let (kind, next) = filters.get(id).unwrap();
            let (changes, next) = changes(chain, &kind, next).unwrap();
            filters.advance(id, next);
            changes
        };
        assert!(matches!(poll(&chain, blocks), FilterChanges::Empty));
        block_with_logs(&mut chain, 1, 2);
        block_with_logs(&mut chain, 2, 1);
        let hashes = |from, to| {
            (from..=to)
                .map(|n| chain.block_hash(n).unwrap().unwrap())
                .collect::<Vec<_>>()
        };
        let expected = hashes(head + 1, head + 2);
        assert!(matches!(poll(&chain, blocks), FilterChanges::Hashes(h) if h == expected));
        assert!(matches!(poll(&chain, blocks), FilterChanges::Empty));
        let FilterChanges::Logs(got) = poll(&chain, logs) else {
            panic!("log filter answers logs");
        };
        let numbers: Vec<_> = got.iter().map(|l| l.block_number.unwrap()).collect();
        assert_eq!(numbers, vec![head + 1, head + 1, head + 2]);
        assert!(matches!(poll(&chain, logs), FilterChanges::Empty));
        // A slow poll moving back does not return old changes again.
        filters.advance(blocks, head);
        assert!(matches!(poll(&chain, blocks), FilterChanges::Empty));
    }

    #[test]
    fn uninstalled_and_surplus_filters_are_refused() {
        let filters = Filters::default();
        let id = filters.install(Kind::Blocks, 0).unwrap();
        assert!(filters.uninstall(id));
        assert!(!filters.uninstall(id));
        assert!(matches!(filters.get(id), Err(RpcError::FilterNotFound)));
        for _ in 0..FILTERS_MAX {
            filters.install(Kind::Blocks, 0).unwrap();
        }
        assert!(matches!(
            filters.install(Kind::Blocks, 0),
            Err(RpcError::TooManyFilters(FILTERS_MAX))
        ));
    }
}

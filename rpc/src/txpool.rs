//! geth's `txpool` namespace over Kestrel's pool: `txpool_status`, `txpool_content`,
//! `txpool_contentFrom` and `txpool_inspect`, in geth's shapes (alloy's `txpool` types, which
//! reth serves them with). Pending means the sender's run from its next nonce, queued what waits
//! behind a gap; transactions in blocks already ordered but not yet executed are in neither, as
//! geth lists no mined ones.

use crate::{RpcContext, chain};
use alloy_primitives::Address;
use alloy_rpc_types_eth::Transaction;
use alloy_rpc_types_txpool::{
    TxpoolContent, TxpoolContentFrom, TxpoolInspect, TxpoolInspectSummary, TxpoolStatus,
};
use jsonrpsee::{core::RpcResult, proc_macros::rpc};
use kestrel_pipeline::status::ChainStatus;
use kestrel_types::RecoveredTx;
use std::collections::BTreeMap;

#[rpc(server, namespace = "txpool")]
pub trait TxpoolApi {
    #[method(name = "status")]
    fn status(&self) -> RpcResult<TxpoolStatus>;

    #[method(name = "content")]
    fn content(&self) -> RpcResult<TxpoolContent>;

    #[method(name = "contentFrom")]
    fn content_from(&self, from: Address) -> RpcResult<TxpoolContentFrom>;

    #[method(name = "inspect")]
    fn inspect(&self) -> RpcResult<TxpoolInspect>;
}

pub struct TxpoolRpc {
    ctx: RpcContext,
}

impl TxpoolRpc {
    pub fn new(ctx: RpcContext) -> Self {
        Self { ctx }
    }

    /// Pooled transactions as geth shows pending ones: no block fields, the gas price they would
    /// pay in the next block.
    fn render(&self, txs: &[RecoveredTx]) -> BTreeMap<Address, BTreeMap<String, Transaction>> {
        let next_base_fee = ChainStatus::get(&self.ctx.status.next_base_fee);
        by_sender(txs, |tx| chain::pending_transaction(tx, next_base_fee))
    }
}

/// geth's grouping: sender, then the nonce as a decimal string.
fn by_sender<T>(
    txs: &[RecoveredTx],
    f: impl Fn(&RecoveredTx) -> T,
) -> BTreeMap<Address, BTreeMap<String, T>> {
    let mut out: BTreeMap<Address, BTreeMap<String, T>> = BTreeMap::new();
    for tx in txs {
        out.entry(tx.sender())
            .or_default()
            .insert(tx.nonce().to_string(), f(tx));
    }
    out
}

impl TxpoolApiServer for TxpoolRpc {
    fn status(&self) -> RpcResult<TxpoolStatus> {
        let size = self.ctx.pool.size();
        Ok(TxpoolStatus {
            pending: size.pending as u64,
            queued: size.queued as u64,
        })
    }

    fn content(&self) -> RpcResult<TxpoolContent> {
        let content = self.ctx.pool.content(None);
        Ok(TxpoolContent {
            pending: self.render(&content.pending),
            queued: self.render(&content.queued),
        })
    }

    fn content_from(&self, from: Address) -> RpcResult<TxpoolContentFrom> {
        let content = self.ctx.pool.content(Some(from));
        let one = |txs: &[RecoveredTx]| self.render(txs).remove(&from).unwrap_or_default();
        Ok(TxpoolContentFrom {
            pending: one(&content.pending),
            queued: one(&content.queued),
        })
    }

    fn inspect(&self) -> RpcResult<TxpoolInspect> {
        let content = self.ctx.pool.content(None);
        let summary = |tx: &RecoveredTx| TxpoolInspectSummary::from_tx(tx.tx().clone());
        Ok(TxpoolInspect {
            pending: by_sender(&content.pending, summary),
            queued: by_sender(&content.queued, summary),
        })
    }
}

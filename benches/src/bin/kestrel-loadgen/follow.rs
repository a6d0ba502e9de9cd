//! Follows the chain through block tags: every new `latest` block's transaction hashes give the
//! inclusion time of ours; each advance of `finalized` gives the finality time of every
//! transaction in the blocks it passes.

use crate::{
    client::{Client, quantity},
    track::Tracker,
};
use eyre::eyre;
use serde_json::json;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How often the head is polled (a tenth of Kestrel's dev block time).
const POLL: Duration = Duration::from_millis(50);
/// Most blocks fetched in one batch.
const BLOCKS_PER_BATCH: u64 = 32;

/// One block as the follower saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeenBlock {
    pub number: u64,
    pub txs: usize,
    pub ours: usize,
    pub gas_used: u64,
    pub seen_at_s: f64,
}

pub struct Follower {
    pub client: Client,
    pub tracker: Arc<Tracker>,
    /// First block that may hold our transactions.
    pub from: u64,
}

impl Follower {
    /// Polls until `stop` is set, then once more; returns the blocks seen.
    pub async fn run(mut self, stop: Arc<AtomicBool>) -> eyre::Result<Vec<SeenBlock>> {
        let mut next = self.from;
        let mut finalized_upto = self.from.saturating_sub(1);
        // Our transactions in included blocks not final yet.
        let mut pending: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut seen = Vec::new();
        loop {
            let last_round = stop.load(Ordering::Acquire);
            // The head number alone: asking for the `latest` block would ship all its
            // transaction hashes every poll.
            let latest = quantity(&self.client.call("eth_blockNumber", json!([])).await?)?;
            while next <= latest {
                let upto = latest.min(next + BLOCKS_PER_BATCH - 1);
                let blocks = self
                    .client
                    .batch(
                        "eth_getBlockByNumber",
                        (next..=upto).map(|n| json!([format!("{n:#x}"), false])),
                    )
                    .await?;
                let at = self.tracker.now_us();
                for (n, block) in (next..=upto).zip(blocks) {
                    let block = block.map_err(|e| eyre!("block {n}: {e}"))?;
                    let hashes = block["transactions"]
                        .as_array()
                        .ok_or_else(|| eyre!("block {n} without transactions"))?;
                    let ours: Vec<u32> = hashes
                        .iter()
                        .enumerate()
                        .filter_map(|(x, h)| Some((x, h.as_str()?.parse().ok()?)))
                        .filter_map(|(x, h)| self.tracker.included(&h, n, x, at))
                        .collect();
                    seen.push(SeenBlock {
                        number: n,
                        txs: hashes.len(),
                        ours: ours.len(),
                        gas_used: quantity(&block["gasUsed"]).unwrap_or(0),
                        seen_at_s: at as f64 / 1e6,
                    });
                    pending.insert(n, ours);
                }
                next = upto + 1;
            }
            // Only while some of ours wait for finality (the `finalized` block carries all its
            // transaction hashes too).
            let finalized = if pending.is_empty() {
                finalized_upto
            } else {
                let block = self
                    .client
                    .call("eth_getBlockByNumber", json!(["finalized", false]))
                    .await?;
                // A block committed since the scan above is final before it is seen: count it
                // at the next poll, once it is in `pending`.
                quantity(&block["number"])
                    .map_err(|e| eyre!("finalized block: {e}"))?
                    .min(next - 1)
            };
            if finalized > finalized_upto {
                let at = self.tracker.now_us();
                let rest = pending.split_off(&(finalized + 1));
                for i in std::mem::replace(&mut pending, rest)
                    .into_values()
                    .flatten()
                {
                    self.tracker.finalized(i, at);
                }
                finalized_upto = finalized;
            }
            if last_round {
                return Ok(seen);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

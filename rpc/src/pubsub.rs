//! WebSocket subscriptions (`eth_subscribe`/`eth_unsubscribe`): `newHeads`, `logs` (address and
//! topic filters), `newPendingTransactions` (hashes, or whole transactions with `true`) and
//! `syncing`, served on `--ws-port` by jsonrpsee's WebSocket server.
//!
//! One feed per server follows the chain: the commit stage hands it each block as it commits it
//! (so a head is announced once RPC can read it, and is not read back from the store and decoded
//! again; none while nobody is subscribed to blocks), and every [`FEED_POLL`] it takes the hashes
//! the pool admitted; it broadcasts both. What every subscriber of a block needs is computed once
//! there, not once per subscriber ([`FeedBlock`]: the serialized header and the block's logs), so a
//! thousand subscribers cost a thousand filters and sends per block, not a thousand
//! serializations and log extractions. Each subscription reads the broadcast and sends to its
//! connection without waiting: a subscriber whose connection buffer is full, or who fell more than
//! [`FEED_BACKLOG_BLOCKS`] blocks behind the feed, has its subscription closed with the reason,
//! never buffered without bound.

use crate::{RpcContext, chain, error::RpcError, logs};
use alloy_primitives::{Address, B256, Bloom, map::HashMap};
use alloy_rpc_types_eth::{Filter, Log};
use jsonrpsee::{
    PendingSubscriptionSink, SubscriptionMessage, SubscriptionSink,
    core::{SubscriptionResult, async_trait, server::TrySendError},
    proc_macros::rpc,
};
use kestrel_pipeline::status::ChainStatus;
use kestrel_storage::ChainView;
use kestrel_types::{BlockNumber, SealedBlock};
use serde::Serialize;
use serde_json::{Value, value::RawValue};
use std::{sync::Arc, time::Duration};
use tokio::sync::broadcast;

/// How often the feed looks for admitted transactions.
pub const FEED_POLL: Duration = Duration::from_millis(20);
/// Blocks the feed keeps for subscribers that are behind; one further behind is closed. A block is
/// dropped once every subscriber has read it, so this costs memory only while one lags (a
/// 5,000-transaction block's logs and their index are about 1.5 MB).
pub const FEED_BACKLOG_BLOCKS: usize = 64;
/// Admitted transaction hashes the feed keeps for subscribers that are behind.
const FEED_BACKLOG_TXS: usize = 65_536;
/// Blocks the feed reads from the store at a time when it missed some from the commit stage (it
/// fell behind): a long gap is published a few blocks at a time, not built all at once.
const FEED_STORED_BLOCKS_PER_READ: u64 = 8;

#[rpc(server)]
pub trait EthPubSubApi {
    #[subscription(
        name = "eth_subscribe" => "eth_subscription",
        unsubscribe = "eth_unsubscribe",
        item = Value
    )]
    async fn subscribe(&self, kind: String, params: Option<Value>) -> SubscriptionResult;
}

/// The broadcasts subscriptions read.
#[derive(Clone)]
pub(crate) struct Feed {
    blocks: broadcast::Sender<Arc<FeedBlock>>,
    txs: broadcast::Sender<B256>,
    ctx: RpcContext,
}

impl Feed {
    /// Starts the feed's tasks on the current tokio runtime.
    pub(crate) fn start(ctx: RpcContext) -> Self {
        // Subscribed before anyone can subscribe to the feed: no block committed later is missed.
        let committed = ctx.status.committed_blocks.subscribe();
        let feed = Self {
            blocks: broadcast::channel(FEED_BACKLOG_BLOCKS).0,
            txs: broadcast::channel(FEED_BACKLOG_TXS).0,
            ctx,
        };
        tokio::spawn(feed.clone().follow_pool());
        tokio::spawn(feed.clone().follow_chain(committed));
        feed
    }

    async fn follow_pool(self) {
        let (_, mut seen) = self.ctx.pool.admitted_since(u64::MAX);
        let mut tick = tokio::time::interval(FEED_POLL);
        loop {
            tick.tick().await;
            let (hashes, now_seen) = self.ctx.pool.admitted_since(seen);
            seen = now_seen;
            for hash in hashes {
                // No subscriber is not an error.
                let _ = self.txs.send(hash);
            }
        }
    }

    /// Publishes each committed block in order. With nobody subscribed to blocks it only follows
    /// the head: a subscriber gets the blocks committed after it subscribed (unless the feed had
    /// fallen behind the commit stage just then: then from the head on).
    async fn follow_chain(self, mut committed: broadcast::Receiver<Arc<SealedBlock>>) {
        // The next block subscribers are owed.
        let mut next: Option<BlockNumber> = None;
        loop {
            let block = match committed.recv().await {
                Ok(block) => Some(block),
                // The feed fell behind the commit stage: what it missed is in the store.
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if self.blocks.receiver_count() == 0 {
                next = block.map(|block| block.header.number + 1);
                continue;
            }
            let to = match &block {
                Some(block) => block.header.number,
                None => match self.ctx.store.view(|r| chain::head(r)) {
                    Ok(Ok(head)) => head,
                    Ok(Err(err)) => return tracing::error!(target: "rpc::pubsub", %err, "no head"),
                    Err(err) => return tracing::error!(target: "rpc::pubsub", %err, "no head"),
                },
            };
            next = Some(self.publish(next.unwrap_or(to), to, block).await);
        }
    }

    /// Publishes blocks `from..=to`: `block` (number `to`) as the commit stage handed it over,
    /// the others read from the store, a few at a time. Returns the next block owed: one the
    /// store could not give is asked for again at the next commit.
    async fn publish(
        &self,
        mut from: BlockNumber,
        to: BlockNumber,
        block: Option<Arc<SealedBlock>>,
    ) -> BlockNumber {
        while from <= to {
            let last = to.min(from + FEED_STORED_BLOCKS_PER_READ - 1);
            let handed = block.clone().filter(|_| last == to);
            let store = self.ctx.store.clone();
            // Built on a blocking thread: a full block's logs take milliseconds.
            let built = tokio::task::spawn_blocking(move || {
                let stored = from..last + u64::from(handed.is_none());
                let mut blocks = store.view(|r| {
                    stored
                        .map(|n| {
                            let block = r.block(n)?.ok_or(RpcError::HeaderNotFound)?;
                            Ok(Arc::new(FeedBlock::new(&block)))
                        })
                        .collect::<Result<Vec<_>, RpcError>>()
                })??;
                blocks.extend(handed.map(|block| Arc::new(FeedBlock::new(&block))));
                Ok::<_, RpcError>(blocks)
            })
            .await;
            let blocks = match built {
                Ok(Ok(blocks)) => blocks,
                Ok(Err(err)) => {
                    tracing::warn!(target: "rpc::pubsub", from, last, %err, "reading committed blocks");
                    return from;
                }
                Err(err) => {
                    tracing::warn!(target: "rpc::pubsub", from, last, %err, "building committed blocks");
                    return from;
                }
            };
            for block in blocks {
                // No subscriber is not an error.
                let _ = self.blocks.send(block);
            }
            from = last + 1;
        }
        from
    }
}

/// A committed block as its subscribers are sent it, computed once by the feed (on a blocking
/// thread, beside the read) for all of them.
pub(crate) struct FeedBlock {
    /// The `newHeads` notification: the RPC header, serialized.
    header: Box<RawValue>,
    bloom: Bloom,
    /// Every log of the block with its block and transaction fields, in block order.
    logs: Vec<Log>,
    /// Where each address and each topic value (per position) occurs in `logs`, ascending: a
    /// filter that names values looks only at the logs carrying one of them. With a full block
    /// the bloom matches nearly every filter, and scanning every log for every subscriber would
    /// cost subscribers × logs per block.
    by_address: HashMap<Address, Vec<u32>>,
    by_topic: [HashMap<B256, Vec<u32>>; 4],
}

impl FeedBlock {
    fn new(block: &SealedBlock) -> Self {
        let header = serde_json::value::to_raw_value(&chain::rpc_block(block, false).header)
            .expect("RPC types serialize");
        let logs = logs::all_block_logs(block);
        let mut by_address: HashMap<Address, Vec<u32>> = HashMap::default();
        let mut by_topic: [HashMap<B256, Vec<u32>>; 4] = Default::default();
        for (i, log) in logs.iter().enumerate() {
            let i = u32::try_from(i).expect("a block's logs fit in u32");
            by_address.entry(log.address()).or_default().push(i);
            for (position, topic) in log.topics().iter().take(4).enumerate() {
                let at = by_topic[position].entry(*topic).or_default();
                // A log naming one value twice at a position is listed once.
                if at.last() != Some(&i) {
                    at.push(i);
                }
            }
        }
        Self {
            header,
            bloom: block.header.logs_bloom,
            logs,
            by_address,
            by_topic,
        }
    }

    /// The block's logs that match the filter's addresses and topics, in block order (its block
    /// range is ignored: a subscription follows new blocks).
    fn logs<'a>(&'a self, filter: &'a Filter) -> impl Iterator<Item = &'a Log> {
        let candidates: Box<dyn Iterator<Item = &Log>> = if !filter.matches_bloom(self.bloom) {
            Box::new(std::iter::empty())
        } else {
            match self.candidates(filter) {
                Some(indexes) => Box::new(indexes.into_iter().map(|i| &self.logs[i as usize])),
                None => Box::new(self.logs.iter()),
            }
        };
        candidates.filter(move |log| filter.matches(&log.inner))
    }

    /// The logs that carry one of the values of the filter's most selective named position
    /// (address or a topic), ascending; `None` if it names none (every log is a candidate).
    fn candidates(&self, filter: &Filter) -> Option<Vec<u32>> {
        fn lists<'a, K: Eq + std::hash::Hash>(
            index: &'a HashMap<K, Vec<u32>>,
            values: impl Iterator<Item = &'a K>,
        ) -> Vec<&'a [u32]> {
            values
                .filter_map(|v| index.get(v).map(Vec::as_slice))
                .collect()
        }
        let mut positions = Vec::with_capacity(5);
        if !filter.address.is_empty() {
            positions.push(lists(&self.by_address, filter.address.iter()));
        }
        for (index, topic) in self.by_topic.iter().zip(&filter.topics) {
            if !topic.is_empty() {
                positions.push(lists(index, topic.iter()));
            }
        }
        let best = positions
            .into_iter()
            .min_by_key(|lists| lists.iter().map(|l| l.len()).sum::<usize>())?;
        let mut out: Vec<u32> = best.concat();
        // Several values at one position: their lists interleave.
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

/// What a subscription sends.
enum Kind {
    NewHeads,
    Logs(Box<Filter>),
    PendingHashes,
    PendingTxs,
    Syncing,
    /// Kestrel's commit states of each block (`crate::progress`).
    Progress,
}

impl Kind {
    fn parse(kind: &str, params: Option<Value>) -> Result<Self, String> {
        match (kind, params) {
            ("newHeads", None) => Ok(Self::NewHeads),
            ("logs", None) => Ok(Self::Logs(Box::default())),
            ("logs", Some(filter)) => serde_json::from_value(filter)
                .map(|f| Self::Logs(Box::new(f)))
                .map_err(|e| format!("invalid logs filter: {e}")),
            ("newPendingTransactions", None | Some(Value::Bool(false))) => Ok(Self::PendingHashes),
            ("newPendingTransactions", Some(Value::Bool(true))) => Ok(Self::PendingTxs),
            ("syncing", None) => Ok(Self::Syncing),
            ("kestrelNewHeads", None) => Ok(Self::Progress),
            (
                kind @ ("newHeads" | "syncing" | "newPendingTransactions" | "kestrelNewHeads"),
                Some(p),
            ) => Err(format!("invalid parameters for {kind}: {p}")),
            (other, _) => Err(format!("unsupported subscription type: {other}")),
        }
    }
}

pub(crate) struct PubSub {
    feed: Feed,
}

impl PubSub {
    pub(crate) fn new(feed: Feed) -> Self {
        Self { feed }
    }
}

/// Why a subscription ended early: the subscriber could not keep up.
const TOO_SLOW: &str = "subscriber too slow: its connection buffer is full";
const LAGGED: &str = "subscriber too slow: it fell behind the feed";

/// Sends one item. `Ok(false)` once the subscriber has gone; `Err` with the reason when it is too
/// slow (the subscription is then closed with that reason).
fn send(sink: &mut SubscriptionSink, item: &impl Serialize) -> Result<bool, &'static str> {
    send_raw(
        sink,
        serde_json::value::to_raw_value(item).expect("RPC types serialize"),
    )
}

fn send_raw(sink: &mut SubscriptionSink, json: Box<RawValue>) -> Result<bool, &'static str> {
    match sink.try_send(SubscriptionMessage::from(json)) {
        Ok(()) => Ok(true),
        Err(TrySendError::Full(_)) => {
            crate::metrics::subscriber_dropped("buffer_full");
            Err(TOO_SLOW)
        }
        Err(TrySendError::Closed(_)) => Ok(false),
    }
}

fn lagged() -> Result<bool, &'static str> {
    crate::metrics::subscriber_dropped("lagged");
    Err(LAGGED)
}

#[async_trait]
impl EthPubSubApiServer for PubSub {
    async fn subscribe(
        &self,
        pending: PendingSubscriptionSink,
        kind: String,
        params: Option<Value>,
    ) -> SubscriptionResult {
        let kind = match Kind::parse(&kind, params) {
            Ok(kind) => kind,
            Err(reason) => {
                pending
                    .reject(jsonrpsee::types::ErrorObject::owned(
                        crate::error::CODE_INVALID_PARAMS,
                        reason,
                        None::<()>,
                    ))
                    .await;
                return Ok(());
            }
        };
        // Subscribed before accepting: nothing committed after the answer is missed. Only to
        // the broadcast this kind reads: a receiver never read keeps every value sent since
        // alive (up to the backlog: 256 blocks of logs for a pending-transactions subscriber).
        let mut blocks =
            matches!(kind, Kind::NewHeads | Kind::Logs(_)).then(|| self.feed.blocks.subscribe());
        let mut txs = matches!(kind, Kind::PendingHashes | Kind::PendingTxs)
            .then(|| self.feed.txs.subscribe());
        let mut progress =
            matches!(kind, Kind::Progress).then(|| self.feed.ctx.status.progress.subscribe());
        let mut sink = pending.accept().await?;
        let ended = match kind {
            Kind::Syncing => {
                // A node that serves RPC has the chain it serves: never syncing (for now).
                send(&mut sink, &false).map(|_| ()).map_err(String::from)?;
                sink.closed().await;
                return Ok(());
            }
            Kind::Progress => loop {
                let progress = progress.as_mut().expect("subscribed above");
                let step = tokio::select! {
                    _ = sink.closed() => break Ok(false),
                    step = progress.recv() => step,
                };
                let sent = match step {
                    Ok(step) => send(&mut sink, &crate::progress::notification(&step)),
                    Err(broadcast::error::RecvError::Lagged(_)) => lagged(),
                    Err(broadcast::error::RecvError::Closed) => Ok(false),
                };
                if sent != Ok(true) {
                    break sent;
                }
            },
            Kind::PendingHashes | Kind::PendingTxs => loop {
                let txs = txs.as_mut().expect("subscribed above");
                let hash = tokio::select! {
                    _ = sink.closed() => break Ok(false),
                    hash = txs.recv() => hash,
                };
                let sent = match hash {
                    Ok(hash) if matches!(kind, Kind::PendingHashes) => send(&mut sink, &hash),
                    Ok(hash) => match self.feed.ctx.pool.get(&hash) {
                        Some(tx) => {
                            let fee = ChainStatus::get(&self.feed.ctx.status.next_base_fee);
                            send(&mut sink, &chain::pending_transaction(&tx, fee))
                        }
                        // Already taken into a block and committed: nothing to show.
                        None => Ok(true),
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => lagged(),
                    Err(broadcast::error::RecvError::Closed) => Ok(false),
                };
                if sent != Ok(true) {
                    break sent;
                }
            },
            Kind::NewHeads | Kind::Logs(_) => loop {
                let blocks = blocks.as_mut().expect("subscribed above");
                let block = tokio::select! {
                    _ = sink.closed() => break Ok(false),
                    block = blocks.recv() => block,
                };
                let sent = match block {
                    Ok(block) => match &kind {
                        Kind::Logs(filter) => block
                            .logs(filter)
                            .map(|log| send(&mut sink, log))
                            .find(|sent| *sent != Ok(true))
                            .unwrap_or(Ok(true)),
                        _ => send_raw(&mut sink, block.header.clone()),
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => lagged(),
                    Err(broadcast::error::RecvError::Closed) => Ok(false),
                };
                if sent != Ok(true) {
                    break sent;
                }
            },
        };
        // A slow subscriber's subscription closes with the reason; jsonrpsee sends it.
        ended.map(|_| ()).map_err(|reason| reason.into())
    }
}

/// Subscription ids as geth writes them: 16 random bytes in hex (web3.py checks the shape).
#[derive(Debug)]
pub(crate) struct HexIds;

impl jsonrpsee::core::traits::IdProvider for HexIds {
    fn next_id(&self) -> jsonrpsee::types::SubscriptionId<'static> {
        let id = alloy_primitives::B128::from(rand::random::<[u8; 16]>());
        jsonrpsee::types::SubscriptionId::Str(id.to_string().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BASE_FEE, FakeChain, TestTx, log, topic, tx_1559};
    use alloy_primitives::{TxKind, address};
    use kestrel_storage::Store;
    use kestrel_types::ChainSpec;

    const A: Address = address!("00000000000000000000000000000000000000aa");
    const B: Address = address!("00000000000000000000000000000000000000bb");

    /// The indexed lookup gives what eth_getLogs's scan gives, for filters naming addresses,
    /// topics at several positions, several values at one, values no log carries, and none.
    #[test]
    fn indexed_logs_match_a_scan() {
        let mut chain = FakeChain::new();
        let tx = |nonce, logs| TestTx {
            tx: tx_1559(B, nonce, TxKind::Call(A), 2 * BASE_FEE as u128, 1),
            gas_used: 50_000,
            logs,
        };
        chain.push_block(vec![
            tx(
                0,
                vec![
                    log(A, vec![topic(1), topic(10)]),
                    log(B, vec![topic(1), topic(11), topic(20)]),
                    log(A, vec![topic(2), topic(10), topic(10)]),
                ],
            ),
            tx(1, vec![log(A, vec![]), log(B, vec![topic(1), topic(10)])]),
        ]);
        let block = &chain.blocks[1];
        let feed = FeedBlock::new(block);
        let filters = [
            serde_json::json!({}),
            serde_json::json!({"address": A}),
            serde_json::json!({"address": [A, B], "topics": [topic(1)]}),
            serde_json::json!({"topics": [null, topic(10)]}),
            serde_json::json!({"topics": [[topic(1), topic(2)], [topic(10), topic(11)]]}),
            serde_json::json!({"topics": [null, null, [topic(20), topic(10)]]}),
            serde_json::json!({"address": B, "topics": [topic(2)]}),
            serde_json::json!({"topics": [topic(9)]}),
        ];
        for json in filters {
            let filter: Filter = serde_json::from_value(json.clone()).unwrap();
            let mut scanned = Vec::new();
            logs::append_block_logs(block, &filter, &mut scanned).unwrap();
            let indexed: Vec<Log> = feed.logs(&filter).cloned().collect();
            assert_eq!(indexed, scanned, "{json}");
        }
        let all: Filter = Default::default();
        assert_eq!(feed.logs(&all).count(), 5);
    }

    /// Commits an empty child of `parent` the way the commit stage does: to the store, then to
    /// the committed-blocks feed.
    fn commit(ctx: &RpcContext, parent: &SealedBlock) -> SealedBlock {
        let block = parent.empty_child();
        let mut writer = ctx.store.begin_block().unwrap();
        writer.insert_block(&block).unwrap();
        writer.commit().unwrap();
        ctx.status.committed_blocks.publish(Arc::new(block.clone()));
        block
    }

    /// A feed that fell behind the commit stage reads the blocks it missed from the store: its
    /// subscribers still get every block once, in order, with the header the store serves.
    #[tokio::test(flavor = "current_thread")]
    async fn a_feed_behind_the_commit_stage_reads_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Arc::new(ChainSpec::dev());
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let genesis = store.init_genesis(&spec).unwrap();
        let (ctx, _ingress) = RpcContext::standalone(store, spec);
        let feed = Feed::start(ctx.clone());
        let mut heads = feed.blocks.subscribe();
        let number_and_hash = |block: &FeedBlock| {
            let header: Value = serde_json::from_str(block.header.get()).unwrap();
            (header["number"].clone(), header["hash"].clone())
        };
        let expect = |block: &SealedBlock| {
            (
                serde_json::to_value(alloy_primitives::U64::from(block.header.number)).unwrap(),
                serde_json::to_value(block.hash).unwrap(),
            )
        };
        // One block the feed is handed and publishes.
        let mut last = commit(&ctx, &genesis);
        assert_eq!(number_and_hash(&heads.recv().await.unwrap()), expect(&last));
        // Then more than the committed-blocks backlog before the feed's task runs again (this
        // runtime has one thread): it lags and reads them back.
        let mut committed = Vec::new();
        for _ in 0..2 * kestrel_pipeline::status::COMMITTED_BACKLOG {
            last = commit(&ctx, &last);
            committed.push(last.clone());
        }
        for block in &committed {
            assert_eq!(number_and_hash(&heads.recv().await.unwrap()), expect(block));
        }
        // And it follows the commits after that as handed over.
        let after = commit(&ctx, &last);
        assert_eq!(
            number_and_hash(&heads.recv().await.unwrap()),
            expect(&after)
        );
        assert!(heads.try_recv().is_err(), "every block published once");
    }
}

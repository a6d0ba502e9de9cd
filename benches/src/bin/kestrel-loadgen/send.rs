//! The timed phase: `concurrency` workers send pre-signed transactions in JSON-RPC batches at the
//! offered rate (or as fast as the nodes answer), round-robin over the nodes. A worker whose node
//! cannot be reached (stopped, restarting) sends the batch again to the next node, as a client
//! behind a load balancer would.
//!
//! Each sender's transactions go out in nonce order: transaction `j` is sender `j % accounts`'s
//! nonce `j / accounts`, so a batch is sent only once every earlier batch holding the same
//! senders' previous nonces is settled (each of its transactions accepted or finally refused),
//! and transactions refused for now ("txpool is full", ...) are re-sent before any new batch.
//! Otherwise concurrent batches, or later batches overtaking a refused one, reach the node out
//! of order and wait there behind nonce gaps (few accounts, `--rate 0`).

use crate::{client::Client, track::Tracker};
use hyper::body::Bytes;
use std::{
    collections::{BTreeSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

/// Refusals that mean "not now" rather than "never": the transaction is sent again later.
const TRANSIENT_ERRORS: [&str; 3] = ["node is busy", "txpool is full", "account limit exceeded"];
/// Most times one transaction is re-sent after a transient refusal.
const RESENDS_MAX: u8 = 100;
/// Pause of a worker whose batch met a transient refusal, so a full node gets room.
const BACKOFF: Duration = Duration::from_millis(50);

pub struct SendPlan {
    pub urls: Vec<String>,
    pub raw_hex: Arc<Vec<String>>,
    /// Sender accounts: transaction `j` is sent by account `j % accounts`.
    pub accounts: usize,
    pub batch: usize,
    pub concurrency: usize,
    /// Transactions per second; 0 means open loop.
    pub rate: f64,
}

struct Shared {
    next_batch: AtomicUsize,
    resend: Mutex<VecDeque<(u32, u8)>>,
    /// Transactions of each batch without a final answer yet.
    unsettled: Vec<AtomicUsize>,
    /// How many batches from the first are all settled, and which later ones are.
    settled: Mutex<(usize, BTreeSet<usize>)>,
    settled_prefix: watch::Sender<usize>,
}

impl Shared {
    /// Transaction `i` (of batch `i / batch`) has its final answer.
    fn settle(&self, i: u32, batch: usize) {
        let b = i as usize / batch;
        if self.unsettled[b].fetch_sub(1, Relaxed) > 1 {
            return;
        }
        let mut guard = self.settled.lock().expect("settled lock");
        let (prefix, done) = &mut *guard;
        done.insert(b);
        while done.remove(prefix) {
            *prefix += 1;
        }
        self.settled_prefix.send_replace(*prefix);
    }
}

/// How many batches from the first must be settled before batch `b` goes out: those holding
/// the previous nonce of a sender in `b`. Transaction `j`'s previous nonce is `j - accounts`, so
/// that is every batch up to the one holding `b`'s last transaction minus `accounts`, `b` itself
/// excepted (a batch's transactions reach the node in order).
fn batches_before(b: usize, batch: usize, accounts: usize) -> usize {
    ((b + 1) * batch - 1)
        .checked_sub(accounts)
        .map_or(0, |j| (j / batch + 1).min(b))
}

/// Sends everything; returns when every transaction was answered (accepted or finally refused).
pub async fn run(plan: SendPlan, tracker: Arc<Tracker>) -> eyre::Result<()> {
    let n = plan.raw_hex.len();
    let batches = n.div_ceil(plan.batch);
    let (settled_prefix, prefix) = watch::channel(0);
    let shared = Arc::new(Shared {
        next_batch: AtomicUsize::new(0),
        resend: Mutex::new(VecDeque::new()),
        unsettled: (0..batches)
            .map(|b| AtomicUsize::new(plan.batch.min(n - b * plan.batch)))
            .collect(),
        settled: Mutex::new((0, BTreeSet::new())),
        settled_prefix,
    });
    let plan = Arc::new(plan);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..plan.concurrency {
        let (plan, shared, tracker) = (plan.clone(), shared.clone(), tracker.clone());
        let mut prefix = prefix.clone();
        workers.spawn(async move {
            let mut node = w % plan.urls.len();
            let mut client = Client::new(&plan.urls[node])?;
            loop {
                // Re-sends first: they hold back their senders' later nonces.
                let mut txs: Vec<(u32, u8)> = {
                    let mut resend = shared.resend.lock().expect("resend lock");
                    let take = plan.batch.min(resend.len());
                    resend.drain(..take).collect()
                };
                if txs.is_empty() {
                    let b = shared.next_batch.load(Relaxed);
                    if b >= batches {
                        // Whoever queued a re-send loops again and picks it up: stopping is safe.
                        return eyre::Ok(());
                    }
                    if *prefix.borrow_and_update() < batches_before(b, plan.batch, plan.accounts) {
                        // Until an earlier batch settles, or a re-send shows up.
                        let _ = tokio::time::timeout(BACKOFF, prefix.changed()).await;
                        continue;
                    }
                    if shared
                        .next_batch
                        .compare_exchange(b, b + 1, Relaxed, Relaxed)
                        .is_err()
                    {
                        continue;
                    }
                    if plan.rate > 0.0 {
                        let due =
                            started + Duration::from_secs_f64((b * plan.batch) as f64 / plan.rate);
                        tokio::time::sleep_until(due).await;
                    }
                    let lo = b * plan.batch;
                    txs.extend((lo..(lo + plan.batch).min(n)).map(|i| (i as u32, 0)));
                }
                match send_batch(&mut client, &plan, &tracker, &shared, &txs).await {
                    Sent::Answered => {}
                    Sent::Busy => tokio::time::sleep(BACKOFF).await,
                    Sent::Unreachable => {
                        node = (node + 1) % plan.urls.len();
                        client = Client::new(&plan.urls[node])?;
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// How a batch went.
enum Sent {
    Answered,
    /// Some refusal was transient: those transactions are queued to be sent again.
    Busy,
    /// The request failed with several nodes to send to: the whole batch is queued to be sent
    /// again, to another node.
    Unreachable,
}

/// Sends one batch and records the answers.
async fn send_batch(
    client: &mut Client,
    plan: &SendPlan,
    tracker: &Tracker,
    shared: &Shared,
    txs: &[(u32, u8)],
) -> Sent {
    let mut body = String::with_capacity(txs.len() * (plan.raw_hex[0].len() + 80));
    body.push('[');
    for (id, (i, _)) in txs.iter().enumerate() {
        if id > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_sendRawTransaction","params":["{}"]}}"#,
            plan.raw_hex[*i as usize]
        ));
    }
    body.push(']');
    let at = tracker.now_us();
    for (i, _) in txs {
        tracker.submitted(*i, at);
    }
    let answers = match client.post(Bytes::from(body)).await {
        Ok(bytes) => crate::client::parse_batch(&bytes, txs.len()),
        Err(e) => Err(e),
    };
    let answers = match answers {
        Ok(a) => a,
        Err(e) => {
            // The whole request failed: nothing is known about these transactions.
            let msg = format!("{e:#}");
            if plan.urls.len() > 1 && txs.iter().all(|(_, tries)| *tries < RESENDS_MAX) {
                tracker.error(&format!("{msg} (resent to another node)"));
                let again = txs.iter().map(|(i, tries)| (*i, tries + 1));
                shared.resend.lock().expect("resend lock").extend(again);
                return Sent::Unreachable;
            }
            for (i, _) in txs {
                tracker.rejected(*i, &msg);
                shared.settle(*i, plan.batch);
            }
            return Sent::Answered;
        }
    };
    let mut transient = false;
    let mut resend = Vec::new();
    for ((i, tries), answer) in txs.iter().zip(answers) {
        match answer {
            Ok(_) => tracker.accepted(*i),
            Err(msg)
                if TRANSIENT_ERRORS.iter().any(|t| msg.contains(t)) && *tries < RESENDS_MAX =>
            {
                transient = true;
                tracker.error(&format!("{msg} (resent)"));
                resend.push((*i, tries + 1));
                continue;
            }
            Err(msg) => tracker.rejected(*i, &msg),
        }
        shared.settle(*i, plan.batch);
    }
    if !resend.is_empty() {
        shared.resend.lock().expect("resend lock").extend(resend);
    }
    if transient {
        Sent::Busy
    } else {
        Sent::Answered
    }
}

#[cfg(test)]
mod tests {
    use super::batches_before;

    #[test]
    fn a_batch_waits_for_the_batches_holding_its_senders_previous_nonces() {
        // One sender: every batch waits for all the earlier ones.
        assert_eq!(
            (0..4)
                .map(|b| batches_before(b, 100, 1))
                .collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // 1,000 senders in batches of 100: batch 10 holds nonce 1 of senders 0..100, whose
        // nonce 0 went in batch 0; batches 1..10 may be in flight meanwhile.
        assert_eq!(batches_before(9, 100, 1_000), 0);
        assert_eq!(batches_before(10, 100, 1_000), 1);
        assert_eq!(batches_before(25, 100, 1_000), 16);
        // 150 senders in batches of 100: batch 1 (transactions 100..200) holds nonce 1 of
        // senders 0..50 (transactions 150..200), whose nonce 0 is in batch 0.
        assert_eq!(batches_before(1, 100, 150), 1);
        assert_eq!(batches_before(0, 100, 150), 0);
    }
}

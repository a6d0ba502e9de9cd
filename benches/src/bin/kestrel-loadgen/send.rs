//! The timed phase: `concurrency` workers send pre-signed transactions in JSON-RPC batches at the
//! offered rate (or as fast as the nodes answer), round-robin over the nodes.
//!
//! Each sender's transactions go out in nonce order: transaction `j` is sender `j % accounts`'s
//! nonce `j / accounts`, so a batch is sent only once every earlier batch holding the same
//! senders' previous nonces has been answered. Otherwise concurrent batches of few senders
//! arrive out of order and wait in the node behind nonce gaps (few accounts, `--rate 0`).

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
    /// How many batches from the first are all answered, and which later ones are.
    answered: Mutex<(usize, BTreeSet<usize>)>,
    answered_prefix: watch::Sender<usize>,
}

impl Shared {
    fn answered(&self, batch: usize) {
        let mut guard = self.answered.lock().expect("answered lock");
        let (prefix, done) = &mut *guard;
        done.insert(batch);
        while done.remove(prefix) {
            *prefix += 1;
        }
        self.answered_prefix.send_replace(*prefix);
    }
}

/// How many batches from the first must be answered before batch `b` goes out: those holding
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
    let (answered_prefix, prefix) = watch::channel(0);
    let shared = Arc::new(Shared {
        next_batch: AtomicUsize::new(0),
        resend: Mutex::new(VecDeque::new()),
        answered: Mutex::new((0, BTreeSet::new())),
        answered_prefix,
    });
    let plan = Arc::new(plan);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..plan.concurrency {
        let (plan, shared, tracker) = (plan.clone(), shared.clone(), tracker.clone());
        let mut prefix = prefix.clone();
        workers.spawn(async move {
            let mut client = Client::new(&plan.urls[w % plan.urls.len()])?;
            loop {
                let mut txs: Vec<(u32, u8)> = Vec::with_capacity(plan.batch);
                let b = shared.next_batch.fetch_add(1, Relaxed);
                if b < batches {
                    if plan.rate > 0.0 {
                        let due =
                            started + Duration::from_secs_f64((b * plan.batch) as f64 / plan.rate);
                        tokio::time::sleep_until(due).await;
                    }
                    // Batches are taken in order, so the ones awaited are all taken: no deadlock.
                    let before = batches_before(b, plan.batch, plan.accounts);
                    prefix.wait_for(|p| *p >= before).await?;
                    let lo = b * plan.batch;
                    txs.extend((lo..(lo + plan.batch).min(n)).map(|i| (i as u32, 0)));
                }
                {
                    let mut resend = shared.resend.lock().expect("resend lock");
                    let room = plan.batch.saturating_sub(txs.len()).max(plan.batch / 4);
                    let take = room.min(resend.len());
                    txs.extend(resend.drain(..take));
                }
                if txs.is_empty() {
                    // Whoever queued a resend loops again and picks it up: stopping is safe.
                    return eyre::Ok(());
                }
                let transient = send_batch(&mut client, &plan, &tracker, &shared, &txs).await;
                if b < batches {
                    shared.answered(b);
                }
                if transient {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// Sends one batch and records the answers; true if some refusal was transient.
async fn send_batch(
    client: &mut Client,
    plan: &SendPlan,
    tracker: &Tracker,
    shared: &Shared,
    txs: &[(u32, u8)],
) -> bool {
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
            for (i, _) in txs {
                tracker.rejected(*i, &msg);
            }
            return false;
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
            }
            Err(msg) => tracker.rejected(*i, &msg),
        }
    }
    if !resend.is_empty() {
        shared.resend.lock().expect("resend lock").extend(resend);
    }
    transient
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

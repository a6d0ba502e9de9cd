//! The timed phase: `concurrency` workers send pre-signed transactions in JSON-RPC batches at the
//! offered rate (or as fast as the nodes answer), round-robin over the nodes.

use crate::{client::Client, track::Tracker};
use hyper::body::Bytes;
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::time::Instant;

/// Refusals that mean "not now" rather than "never": the transaction is sent again later.
const TRANSIENT_ERRORS: [&str; 3] = ["node is busy", "txpool is full", "account limit exceeded"];
/// Most times one transaction is re-sent after a transient refusal.
const RESENDS_MAX: u8 = 100;
/// Pause of a worker whose batch met a transient refusal, so a full node gets room.
const BACKOFF: Duration = Duration::from_millis(50);

pub struct SendPlan {
    pub urls: Vec<String>,
    pub raw_hex: Arc<Vec<String>>,
    pub batch: usize,
    pub concurrency: usize,
    /// Transactions per second; 0 means open loop.
    pub rate: f64,
}

struct Shared {
    next_batch: AtomicUsize,
    resend: Mutex<VecDeque<(u32, u8)>>,
}

/// Sends everything; returns when every transaction was answered (accepted or finally refused).
pub async fn run(plan: SendPlan, tracker: Arc<Tracker>) -> eyre::Result<()> {
    let n = plan.raw_hex.len();
    let batches = n.div_ceil(plan.batch);
    let shared = Arc::new(Shared {
        next_batch: AtomicUsize::new(0),
        resend: Mutex::new(VecDeque::new()),
    });
    let plan = Arc::new(plan);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..plan.concurrency {
        let (plan, shared, tracker) = (plan.clone(), shared.clone(), tracker.clone());
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
                if send_batch(&mut client, &plan, &tracker, &shared, &txs).await {
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

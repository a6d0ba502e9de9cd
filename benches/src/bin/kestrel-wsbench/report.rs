//! What the run measured: the HTTP poller's first sightings, the node's memory, latencies and the report with its summary line.

use super::*;

/// When the poller first saw each block number (`eth_blockNumber` at or past it).
#[derive(Default)]
pub(super) struct Seen {
    pub(super) at: BTreeMap<u64, Instant>,
    /// Blocks the poller did not see as the head (it saw a later one first): no latency sample.
    pub(super) skipped: Vec<u64>,
    pub(super) head: u64,
}

pub(super) async fn poller(
    mut http: Client,
    every: Duration,
    seen: Arc<Mutex<Seen>>,
) -> eyre::Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let head = quantity(&http.call("eth_blockNumber", json!([])).await?)?;
        let at = Instant::now();
        let mut seen = seen.lock();
        if seen.at.is_empty() {
            seen.at.insert(head, at);
            seen.head = head;
            continue;
        }
        if head > seen.head {
            for n in seen.head + 1..head {
                seen.skipped.push(n);
            }
            seen.at.insert(head, at);
            seen.head = head;
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub(super) struct Memory {
    /// (seconds since start, VmRSS kB, RssAnon kB)
    pub(super) samples: Vec<(f64, u64, u64)>,
    pub(super) vm_rss_max_kb: u64,
    pub(super) rss_anon_max_kb: u64,
    pub(super) vm_rss_start_kb: u64,
    pub(super) vm_rss_end_kb: u64,
}

pub(super) fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

pub(super) async fn sample_memory(pid: u32, start: Instant, memory: Arc<Mutex<Memory>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some((rss, anon)) = read_rss(pid) else {
            return;
        };
        let mut m = memory.lock();
        m.samples.push((start.elapsed().as_secs_f64(), rss, anon));
        m.vm_rss_max_kb = m.vm_rss_max_kb.max(rss);
        m.rss_anon_max_kb = m.rss_anon_max_kb.max(anon);
        if m.vm_rss_start_kb == 0 {
            m.vm_rss_start_kb = rss;
        }
        m.vm_rss_end_kb = rss;
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    pub(super) samples: usize,
    pub(super) p50_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
}

impl Latency {
    pub(super) fn of(mut us: Vec<i64>) -> Option<Self> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        Some(Self {
            samples: us.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub(super) struct Report {
    pub(super) subscribers: usize,
    pub(super) connected: usize,
    pub(super) seconds: f64,
    /// The blocks every subscriber was checked over: from when all were subscribed to the stop.
    pub(super) first_block: u64,
    pub(super) last_block: u64,
    pub(super) heads_expected: u64,
    pub(super) heads_received: u64,
    pub(super) subscribers_heads_ok: usize,
    pub(super) logs_expected: u64,
    pub(super) logs_received: u64,
    pub(super) subscribers_logs_ok: usize,
    pub(super) exact_log_checks: usize,
    /// Head notification received minus when the HTTP poller first saw the block, over every
    /// subscriber and block (blocks the poller skipped have no sample).
    pub(super) head_latency: Option<Latency>,
    /// Per block: (number, fastest, median, slowest subscriber) in ms. A block whose fastest
    /// subscriber is late was late leaving the node's feed; one with a wide spread, in the
    /// sending (or in this client).
    pub(super) head_latency_by_block: Vec<(u64, f64, f64, f64)>,
    pub(super) poller_skipped_blocks: usize,
    pub(super) slow: Option<SlowReport>,
    pub(super) memory: Option<Memory>,
    pub(super) problems_total: usize,
    pub(super) problems: Vec<String>,
    pub(super) passed: bool,
}

pub(super) fn signed_us(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_micros() as i64,
        None => -(earlier.duration_since(later).as_micros() as i64),
    }
}

pub(super) fn summary(r: &Report) -> String {
    let latency = r.head_latency.as_ref().map_or("-".into(), |l| {
        format!("p50 {:.1} ms p99 {:.1} ms", l.p50_ms, l.p99_ms)
    });
    let slow = r.slow.as_ref().map_or("none".into(), |s| {
        if s.passed {
            format!("closed ({} subscriptions)", s.closed.len())
        } else {
            "NOT closed".into()
        }
    });
    let memory = r.memory.as_ref().map_or("-".into(), |m| {
        format!(
            "VmRSS max {} MiB, RssAnon max {} MiB",
            m.vm_rss_max_kb / 1024,
            m.rss_anon_max_kb / 1024
        )
    });
    format!(
        "wsbench: {} {}/{} subscribers, blocks {}..={}, heads in order {}/{} ({} of {}), logs {}/{} \
         ({} of {}), head latency {latency}, slow subscriber {slow}, node {memory}",
        if r.passed { "PASS" } else { "FAIL" },
        r.connected,
        r.subscribers,
        r.first_block,
        r.last_block,
        r.subscribers_heads_ok,
        r.subscribers,
        r.heads_received,
        r.heads_expected,
        r.subscribers_logs_ok,
        r.subscribers,
        r.logs_received,
        r.logs_expected,
    )
}

pub(super) type Expected = HashMap<(Side, Address), Vec<LogKey>>;

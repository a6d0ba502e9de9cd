//! The WebSocket side: the endpoint, subscribing, the subscribers that record what they receive and the slow one that never reads.

use super::*;

/// Notifications and answers as the node sends them; only the fields the checks read.
#[derive(Deserialize)]
pub(super) struct Incoming<'a> {
    pub(super) id: Option<u64>,
    #[serde(borrow)]
    pub(super) result: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) error: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) params: Option<Notification<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Notification<'a> {
    pub(super) subscription: &'a str,
    #[serde(borrow)]
    pub(super) result: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct HeadFields<'a> {
    pub(super) number: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogFields<'a> {
    pub(super) block_number: &'a str,
    pub(super) log_index: &'a str,
    pub(super) transaction_hash: B256,
}

pub(super) fn hex_u64(s: &str) -> eyre::Result<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).wrap_err_with(|| format!("quantity {s}"))
}

/// Where the WebSocket endpoint is: socket address, Host header, path.
pub(super) struct Endpoint {
    pub(super) addr: SocketAddr,
    pub(super) host: String,
    pub(super) path: String,
}

impl Endpoint {
    pub(super) fn parse(url: &str) -> eyre::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| eyre!("only ws:// URLs are supported: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
            .next()
            .ok_or_else(|| eyre!("{host} resolves to nothing"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }

    async fn connect(&self, rcvbuf: Option<u32>) -> eyre::Result<(Sender<Ws>, Receiver<Ws>)> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = rcvbuf {
            // Before connecting, so the window the node sees is small from the start.
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Handshake::new(stream.compat(), &self.host, &self.path);
        match client.handshake().await? {
            ServerResponse::Accepted { .. } => Ok(client.into_builder().finish()),
            ServerResponse::Redirect { status_code, .. } => bail!("redirected ({status_code})"),
            ServerResponse::Rejected { status_code } => bail!("rejected ({status_code})"),
        }
    }
}

pub(super) async fn subscribe(
    tx: &mut Sender<Ws>,
    rx: &mut Receiver<Ws>,
    id: u64,
    params: Value,
) -> eyre::Result<String> {
    let call = json!({"jsonrpc": "2.0", "id": id, "method": "eth_subscribe", "params": params});
    tx.send_text(call.to_string()).await?;
    tx.flush().await?;
    let mut buf = Vec::new();
    // Nothing else can arrive before the answer: every earlier subscription's answer was read.
    rx.receive_data(&mut buf).await?;
    let msg: Incoming = serde_json::from_slice(&buf)?;
    match (msg.id, msg.result, msg.error) {
        (Some(got), Some(result), None) if got == id => Ok(serde_json::from_str(result.get())?),
        _ => bail!("eth_subscribe {params}: {}", String::from_utf8_lossy(&buf)),
    }
}

/// Held by a subscriber until it has subscribed: a place in the connection burst, and the
/// main task's count of subscribers not yet ready.
pub(super) type Ready = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::mpsc::Sender<()>,
);

/// One subscriber: `logs` first, then `newHeads`, so every block whose head it is sent has its
/// logs sent too (both read the node's feed; the logs one started reading first).
pub(super) async fn subscriber(
    endpoint: Arc<Endpoint>,
    follow: Follow,
    token: Address,
    record: Arc<Mutex<Record>>,
    ready: Ready,
) {
    if let Err(err) = subscriber_inner(&endpoint, &follow, token, &record, ready).await {
        record.lock().problems.push(format!("{err:#}"));
    }
}

pub(super) async fn subscriber_inner(
    endpoint: &Endpoint,
    follow: &Follow,
    token: Address,
    record: &Mutex<Record>,
    ready: Ready,
) -> eyre::Result<()> {
    let (mut tx, mut rx) = endpoint.connect(None).await?;
    let logs_id = subscribe(&mut tx, &mut rx, 1, json!(["logs", follow.filter(token)])).await?;
    let heads_id = subscribe(&mut tx, &mut rx, 2, json!(["newHeads"])).await?;
    drop(ready);
    let mut buf = Vec::new();
    // Until the main task has what it needs and aborts this task.
    loop {
        buf.clear();
        let received = rx.receive_data(&mut buf).await;
        let at = Instant::now();
        received.wrap_err("receiving")?;
        let msg: Incoming = serde_json::from_slice(&buf)
            .wrap_err_with(|| format!("parsing {}", String::from_utf8_lossy(&buf)))?;
        let Some(note) = msg.params else {
            bail!("unexpected message: {}", String::from_utf8_lossy(&buf));
        };
        if let Some(err) = note.error {
            bail!("subscription {} closed: {}", note.subscription, err.get());
        }
        let result = note
            .result
            .ok_or_else(|| eyre!("notification without result"))?;
        if note.subscription == heads_id {
            let head: HeadFields = serde_json::from_str(result.get())?;
            let number = hex_u64(head.number)?;
            record.lock().heads.push((number, at));
        } else if note.subscription == logs_id {
            let log: LogFields = serde_json::from_str(result.get())?;
            record.lock().logs.push(LogKey {
                block: hex_u64(log.block_number)?,
                log_index: hex_u64(log.log_index)?,
                tx: log.transaction_hash,
            });
        } else {
            bail!(
                "notification for an unknown subscription {}",
                note.subscription
            );
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub(super) struct SlowReport {
    pub(super) subscriptions: usize,
    /// Subscriptions the node closed, with their reason.
    pub(super) closed: Vec<String>,
    /// Notifications read once the run was over (its backlog).
    pub(super) backlog_messages: u64,
    pub(super) passed: bool,
}

/// The slow subscriber: subscribes to everything, never reads until `stop`, then reads its
/// backlog and reports which subscriptions the node closed and why.
pub(super) async fn slow_subscriber(
    endpoint: Arc<Endpoint>,
    pending_subscriptions: usize,
    stop: tokio::sync::oneshot::Receiver<()>,
    problems: Arc<Mutex<Vec<String>>>,
) -> SlowReport {
    let mut report = SlowReport::default();
    let run = async {
        let (mut tx, mut rx) = endpoint.connect(Some(SLOW_RCVBUF_BYTES)).await?;
        let mut ids = Vec::new();
        let pending = std::iter::repeat_n(
            json!(["newPendingTransactions", true]),
            pending_subscriptions,
        );
        let all = pending.chain([json!(["logs", {}]), json!(["newHeads"])]);
        for (id, params) in all.enumerate() {
            ids.push(subscribe(&mut tx, &mut rx, id as u64 + 1, params).await?);
        }
        report.subscriptions = ids.len();
        let _ = stop.await;
        let mut buf = Vec::new();
        let mut closed: HashMap<String, String> = HashMap::new();
        let draining = Instant::now();
        while closed.len() < ids.len() && draining.elapsed() < SLOW_DRAIN_MAX {
            let Ok(received) = tokio::time::timeout(SLOW_DRAIN_IDLE, {
                buf.clear();
                rx.receive_data(&mut buf)
            })
            .await
            else {
                break;
            };
            received.wrap_err("reading the slow subscriber's backlog")?;
            report.backlog_messages += 1;
            let msg: Incoming = serde_json::from_slice(&buf)?;
            let note = msg
                .params
                .ok_or_else(|| eyre!("unexpected: {}", String::from_utf8_lossy(&buf)))?;
            if let Some(reason) = closed.get(note.subscription) {
                bail!(
                    "subscription {} sent a notification after its close ({reason})",
                    note.subscription
                );
            }
            if let Some(err) = note.error {
                closed.insert(note.subscription.to_string(), err.get().to_string());
            }
        }
        report.closed = closed.into_values().collect();
        report.closed.sort();
        eyre::Ok(())
    };
    if let Err(err) = run.await {
        problems.lock().push(format!("slow subscriber: {err:#}"));
    }
    report.passed = !report.closed.is_empty()
        && report
            .closed
            .iter()
            .all(|r| r.contains("subscriber too slow"));
    if !report.passed {
        problems.lock().push(format!(
            "slow subscriber: expected its subscriptions closed as too slow, got {:?}",
            report.closed
        ));
    }
    report
}

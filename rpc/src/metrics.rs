//! Per-method request metrics, and geth's answer to unknown methods, as a jsonrpsee RPC
//! middleware. It sees every call, including each call of a batch.

use futures_util::{StreamExt as _, stream::FuturesUnordered};
use jsonrpsee::{
    core::{
        middleware::{Batch, BatchEntry, Notification, RpcServiceT},
        server::{BatchResponseBuilder, MethodResponse},
    },
    types::{
        ErrorObject, Id, Request,
        error::{METHOD_NOT_FOUND_CODE, reject_too_big_batch_response},
    },
};
use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, OnceLock},
    time::Instant,
};

pub const REQUEST_DURATION_SECONDS: &str = "kestrel_rpc_request_duration_seconds";
pub const REQUESTS_TOTAL: &str = "kestrel_rpc_requests_total";
pub const ERRORS_TOTAL: &str = "kestrel_rpc_errors_total";
pub const REJECTED_TOTAL: &str = "kestrel_rpc_rejected_total";
pub const OPEN_CONNECTIONS: &str = "kestrel_rpc_open_connections";
pub const BODY_BUDGET_USED_BYTES: &str = "kestrel_rpc_body_budget_used_bytes";
pub const EXECUTION_WAIT_SECONDS: &str = "kestrel_rpc_execution_wait_seconds";
pub const DB_READER_WAIT_SECONDS: &str = "kestrel_rpc_db_reader_wait_seconds";
pub const SUBSCRIBERS_DROPPED_TOTAL: &str = "kestrel_rpc_subscribers_dropped_total";
/// Calls of one batch in progress at once. Enough for a batch of raw transactions to reach the
/// ingress stage together (the load generator sends 500); a batch of 10,000 cheap calls held
/// each call's state at once, hundreds of megabytes over a few dozen such batches.
pub const BATCH_CALLS_CONCURRENT_MAX: usize = 1024;
/// The `method` label of calls to methods the server does not have: labels stay bounded
/// whatever names clients send.
const UNKNOWN_METHOD: &str = "unknown";

/// Declares the RPC metrics (name, unit, help) to the installed recorder.
pub fn describe_metrics() {
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer one JSON-RPC call, by method"
    );
    describe_counter!(REQUESTS_TOTAL, "JSON-RPC calls received, by method");
    describe_counter!(
        ERRORS_TOTAL,
        "JSON-RPC calls answered with an error, by method and code"
    );
    describe_counter!(
        REJECTED_TOTAL,
        "Connections, requests and calls refused or cut short by an RPC limit, by reason"
    );
    describe_gauge!(OPEN_CONNECTIONS, "Open JSON-RPC (HTTP) connections");
    describe_counter!(
        SUBSCRIBERS_DROPPED_TOTAL,
        "WebSocket subscriptions closed because the subscriber could not keep up, by reason"
    );
    describe_gauge!(
        BODY_BUDGET_USED_BYTES,
        Unit::Bytes,
        "Bytes of request bodies held, of the request body memory budget"
    );
    describe_histogram!(
        EXECUTION_WAIT_SECONDS,
        Unit::Seconds,
        "Time a call waited for an execution slot (eth_call, eth_estimateGas, eth_getLogs, eth_feeHistory)"
    );
    describe_histogram!(
        DB_READER_WAIT_SECONDS,
        Unit::Seconds,
        "Time a call waited for a database read transaction"
    );
}

/// The limits that refuse or cut short (`kestrel_rpc_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Connections,
    ConnectionsPerIp,
    HeaderTimeout,
    BodyTimeout,
    BodyTooLarge,
    BodyBudget,
    BodyBudgetPerIp,
    BodyRead,
    Rate,
    CallTimeout,
    BatchTimeout,
}

impl Rejection {
    const ALL: [Self; 11] = [
        Self::Connections,
        Self::ConnectionsPerIp,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::BodyTooLarge,
        Self::BodyBudget,
        Self::BodyBudgetPerIp,
        Self::BodyRead,
        Self::Rate,
        Self::CallTimeout,
        Self::BatchTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyBudget => "body_budget",
            Self::BodyBudgetPerIp => "body_budget_per_ip",
            Self::BodyRead => "body_read",
            Self::Rate => "rate",
            Self::CallTimeout => "call_timeout",
            Self::BatchTimeout => "batch_timeout",
        }
    }
}

pub(crate) fn rejected(reason: Rejection) {
    counter!(REJECTED_TOTAL, "reason" => reason.label()).increment(1);
}

/// Creates every limit's series at zero, so that dashboards and `rate()` see them before the
/// first attack does.
pub(crate) fn init_limit_metrics() {
    for reason in Rejection::ALL {
        counter!(REJECTED_TOTAL, "reason" => reason.label()).increment(0);
    }
    set_open_connections(0);
}

pub(crate) fn set_open_connections(open: u32) {
    gauge!(OPEN_CONNECTIONS).set(open);
}

pub(crate) fn set_body_budget_used(bytes: u64) {
    gauge!(BODY_BUDGET_USED_BYTES).set(bytes as f64);
}

/// A subscription closed as too slow: `buffer_full` (its connection's send buffer) or `lagged`
/// (it fell behind the feed's backlog).
pub(crate) fn subscriber_dropped(reason: &'static str) {
    counter!(SUBSCRIBERS_DROPPED_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn execution_wait(waited: std::time::Duration) {
    histogram!(EXECUTION_WAIT_SECONDS).record(waited.as_secs_f64());
}

pub(crate) fn db_reader_wait(waited: std::time::Duration) {
    histogram!(DB_READER_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Each registered method's request counter and duration histogram, registered with the
/// recorder at the method's first call (so `/metrics` lists the methods called, as before) and
/// kept: looking them up by name and labels for every call (cloning the labels into a key, then
/// a registry search) was 7 % of the RPC thread under a load of raw transactions.
pub(crate) struct MethodMetrics(HashMap<&'static str, OnceLock<MethodHandles>>);

struct MethodHandles {
    requests: Counter,
    duration: Histogram,
}

impl MethodHandles {
    /// A call of `method` begun at `started` was answered with `response`.
    fn answered(&self, method: &'static str, started: Instant, response: &MethodResponse) {
        self.requests.increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
        if let Some(code) = response.as_error_code() {
            count_error(method, code);
        }
    }
}

impl MethodMetrics {
    pub(crate) fn new(methods: impl IntoIterator<Item = &'static str>) -> Self {
        Self(methods.into_iter().map(|m| (m, OnceLock::new())).collect())
    }

    /// The method's own name and handles, if it is registered.
    fn get(&self, method: &str) -> Option<(&'static str, &MethodHandles)> {
        let (&name, handles) = self.0.get_key_value(method)?;
        let handles = handles.get_or_init(|| MethodHandles {
            requests: counter!(REQUESTS_TOTAL, "method" => name),
            duration: histogram!(REQUEST_DURATION_SECONDS, "method" => name),
        });
        Some((name, handles))
    }
}

/// The middleware: wraps jsonrpsee's RPC service of one connection.
#[derive(Clone)]
pub(crate) struct RpcMetrics<S> {
    pub inner: S,
    /// The registered methods (the only `method` label values besides "unknown") and their
    /// metric handles.
    pub methods: Arc<MethodMetrics>,
    /// Bound on a batch's response, as the server enforces for its own batches.
    pub max_response_body_bytes: usize,
    /// A batch's raw transactions are answered together (`raw_batch`).
    pub raw_txs: Arc<crate::raw_batch::RawTxs>,
}

impl<S> RpcServiceT for RpcMetrics<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    type MethodResponse = MethodResponse;
    type BatchResponse = MethodResponse;
    type NotificationResponse = MethodResponse;

    fn call<'a>(&self, req: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let methods = self.methods.clone();
        let inner = self.inner.clone();
        async move {
            let Some((method, handles)) = methods.get(req.method.as_ref()) else {
                counter!(REQUESTS_TOTAL, "method" => UNKNOWN_METHOD).increment(1);
                count_error(UNKNOWN_METHOD, METHOD_NOT_FOUND_CODE);
                let message = format!("the method {} does not exist/is not available", req.method);
                let err = ErrorObject::owned(METHOD_NOT_FOUND_CODE, message, None::<()>);
                return MethodResponse::error(req.id, err).with_extensions(req.extensions);
            };
            let started = Instant::now();
            let response = inner.call(req).await;
            handles.answered(method, started, &response);
            response
        }
    }

    /// jsonrpsee's own batch handling calls the inner service directly, bypassing `call` above;
    /// this goes through `call`. The batch's raw transactions are answered first, together
    /// (`raw_batch`: they reach the ingress stage at once and are recovered in batches on its
    /// threads). The other calls run concurrently, up to [`BATCH_CALLS_CONCURRENT_MAX`] at once,
    /// so that a batch of 10,000 calls does not hold 10,000 calls' state at once.
    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let service = self.clone();
        async move {
            let mut got_notification = false;
            let mut calls = Vec::new();
            let mut raw_txs = Vec::new();
            for entry in batch.into_iter() {
                // The call's place among the answers.
                let i = calls.len() + raw_txs.len();
                match entry {
                    Ok(BatchEntry::Call(req)) => match crate::raw_batch::raw_tx(&req) {
                        Some(raw) => raw_txs.push((i, req, raw)),
                        None => calls.push((i, Ok(req))),
                    },
                    Ok(BatchEntry::Notification(n)) => {
                        got_notification = true;
                        service.notification(n).await;
                    }
                    Err(err) => calls.push((i, Err(err.into_parts()))),
                }
            }
            // Answers as they complete, given up as soon as they outgrow the response limit: a
            // batch of 2,000 large answers (receipts of a whole block each) must not all be held
            // before the limit is checked.
            let limit = service.max_response_body_bytes;
            let mut answers: Vec<Option<MethodResponse>> = Vec::new();
            answers.resize_with(calls.len() + raw_txs.len(), || None);
            let mut answered_bytes = 0;
            let mut take = |i: usize, response: MethodResponse| {
                // Each answer and its separator, as the builder counts them.
                answered_bytes += response.as_json().get().len() + 1;
                answers[i] = Some(response);
                answered_bytes <= limit
            };
            let too_big = || MethodResponse::error(Id::Null, reject_too_big_batch_response(limit));
            if !raw_txs.is_empty() {
                let (method, handles) = service
                    .methods
                    .get(crate::raw_batch::METHOD)
                    .expect("eth_sendRawTransaction is registered");
                let started = Instant::now();
                for (i, response) in service.raw_txs.answer(raw_txs, limit).await {
                    handles.answered(method, started, &response);
                    if !take(i, response) {
                        return too_big();
                    }
                }
            }
            let mut calls = calls.into_iter();
            let mut pending = FuturesUnordered::new();
            for (i, call) in calls.by_ref().take(BATCH_CALLS_CONCURRENT_MAX) {
                pending.push(answer(service.clone(), i, call));
            }
            while let Some((i, response)) = pending.next().await {
                if let Some((next, call)) = calls.next() {
                    pending.push(answer(service.clone(), next, call));
                }
                if !take(i, response) {
                    return too_big();
                }
            }
            let mut responses = BatchResponseBuilder::new_with_limit(limit);
            for response in answers.into_iter().flatten() {
                if let Err(too_big) = responses.append(response) {
                    return too_big;
                }
            }
            if responses.is_empty() && got_notification {
                MethodResponse::notification()
            } else {
                // An empty batch becomes jsonrpsee's "invalid request" here.
                MethodResponse::from_batch(responses.finish())
            }
        }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}

/// Call `i` of a batch, or its parse error.
async fn answer<'a, S>(
    service: S,
    i: usize,
    call: Result<Request<'a>, (ErrorObject<'a>, Id<'a>)>,
) -> (usize, MethodResponse)
where
    S: RpcServiceT<MethodResponse = MethodResponse>,
{
    let response = match call {
        Ok(req) => service.call(req).await,
        Err((err, id)) => MethodResponse::error(id, err),
    };
    (i, response)
}

fn count_error(method: &'static str, code: i32) {
    counter!(ERRORS_TOTAL, "method" => method, "code" => code.to_string()).increment(1);
}

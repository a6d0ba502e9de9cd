//! Per-method request metrics, and geth's answer to unknown methods, as a jsonrpsee RPC
//! middleware. It sees every call, including each call of a batch.

use futures_util::future::{Either, join_all, ready};
use jsonrpsee::{
    core::{
        middleware::{Batch, BatchEntry, Notification, RpcServiceT},
        server::{BatchResponseBuilder, MethodResponse},
    },
    types::{ErrorObject, Request, error::METHOD_NOT_FOUND_CODE},
};
use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use std::{collections::HashSet, future::Future, sync::Arc, time::Instant};

pub const REQUEST_DURATION_SECONDS: &str = "kestrel_rpc_request_duration_seconds";
pub const REQUESTS_TOTAL: &str = "kestrel_rpc_requests_total";
pub const ERRORS_TOTAL: &str = "kestrel_rpc_errors_total";
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
}

/// The middleware: wraps jsonrpsee's RPC service of one connection.
#[derive(Clone)]
pub(crate) struct RpcMetrics<S> {
    pub inner: S,
    /// Names of the registered methods: the only `method` label values besides "unknown".
    pub methods: Arc<HashSet<&'static str>>,
    /// Bound on a batch's response, as the server enforces for its own batches.
    pub max_response_body_bytes: usize,
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
        let method = self.methods.get(req.method.as_ref()).copied();
        let inner = self.inner.clone();
        async move {
            let Some(method) = method else {
                record(UNKNOWN_METHOD, Some(METHOD_NOT_FOUND_CODE), None);
                let message = format!("the method {} does not exist/is not available", req.method);
                let err = ErrorObject::owned(METHOD_NOT_FOUND_CODE, message, None::<()>);
                return MethodResponse::error(req.id, err).with_extensions(req.extensions);
            };
            let started = Instant::now();
            let response = inner.call(req).await;
            record(method, response.as_error_code(), Some(started));
            response
        }
    }

    /// jsonrpsee's own batch handling calls the inner service directly, bypassing `call` above;
    /// this goes through `call`. The calls of a batch run concurrently: a batch of
    /// `eth_sendRawTransaction`s then reaches the ingress stage at once and is recovered in
    /// batches on its threads, rather than one transaction per round trip.
    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let service = self.clone();
        async move {
            let mut got_notification = false;
            let mut calls = Vec::new();
            for entry in batch.into_iter() {
                match entry {
                    Ok(BatchEntry::Call(req)) => calls.push(Either::Left(service.call(req))),
                    Ok(BatchEntry::Notification(n)) => {
                        got_notification = true;
                        service.notification(n).await;
                    }
                    Err(err) => {
                        let (err, id) = err.into_parts();
                        calls.push(Either::Right(ready(MethodResponse::error(id, err))));
                    }
                }
            }
            let mut responses =
                BatchResponseBuilder::new_with_limit(service.max_response_body_bytes);
            for response in join_all(calls).await {
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

fn record(method: &'static str, error_code: Option<i32>, started: Option<Instant>) {
    counter!(REQUESTS_TOTAL, "method" => method).increment(1);
    if let Some(started) = started {
        histogram!(REQUEST_DURATION_SECONDS, "method" => method)
            .record(started.elapsed().as_secs_f64());
    }
    if let Some(code) = error_code {
        counter!(ERRORS_TOTAL, "method" => method, "code" => code.to_string()).increment(1);
    }
}

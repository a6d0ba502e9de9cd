//! A batch's `eth_sendRawTransaction` calls, answered together: their transactions go to the
//! ingress stage at once ([`IngressHandle::submit_all`]) and their answers come back in order,
//! where each call went through the middleware stack, jsonrpsee's method dispatch and a future
//! of its own that ingress woke. Under a load of 1,000-transaction batches that per-call
//! machinery was about half of the RPC thread, a tenth of the node (BENCHMARKS.md). Each call is
//! still rate limited, counted and answered as the method answers it alone; a call whose
//! parameters are anything but one hex string goes the usual way, so that the method's own
//! parser words its error.

use crate::{error::RpcError, limits::RateLimiter};
use alloy_primitives::{B256, Bytes};
use jsonrpsee::{
    ResponsePayload,
    core::server::MethodResponse,
    types::{ErrorObjectOwned, Request},
};
use kestrel_pipeline::mempool::IngressHandle;
use std::sync::Arc;

/// The method answered here.
pub(crate) const METHOD: &str = "eth_sendRawTransaction";

/// What answering raw transactions together needs: where they go, and the per-IP call rate
/// each call counts against (as [`crate::limits::RateLimit`] counts every other call).
pub(crate) struct RawTxs {
    pub ingress: IngressHandle,
    pub limiter: Arc<RateLimiter>,
}

/// The transaction `req` submits, if it is an `eth_sendRawTransaction` call with exactly one
/// parameter, a hex string.
pub(crate) fn raw_tx(req: &Request<'_>) -> Option<Bytes> {
    if req.method != METHOD {
        return None;
    }
    let (raw,): (Bytes,) = serde_json::from_str(req.params.as_ref()?.get()).ok()?;
    Some(raw)
}

impl RawTxs {
    /// Answers `calls` (each with its place in the batch and its transaction, from [`raw_tx`]):
    /// those over their caller's rate refused, the others submitted together. Each answer comes
    /// with its call's place.
    pub(crate) async fn answer(
        &self,
        calls: Vec<(usize, Request<'_>, Bytes)>,
        max_response_bytes: usize,
    ) -> Vec<(usize, MethodResponse)> {
        let mut answers = Vec::with_capacity(calls.len());
        let mut submitted = Vec::with_capacity(calls.len());
        let mut raws = Vec::with_capacity(calls.len());
        for (index, req, raw) in calls {
            let refused = self.limiter.refuse(&req);
            let id = req.id.into_owned();
            match refused {
                Some(refused) => answers.push((index, MethodResponse::error(id, refused))),
                None => {
                    submitted.push((index, id));
                    raws.push(raw);
                }
            }
        }
        let hashes = self.ingress.submit_all(raws).await;
        for ((index, id), hash) in submitted.into_iter().zip(hashes) {
            let payload: ResponsePayload<'_, B256> = match hash {
                Ok(hash) => ResponsePayload::success(hash),
                Err(refused) => {
                    ResponsePayload::error(ErrorObjectOwned::from(RpcError::Pool(refused)))
                }
            };
            answers.push((
                index,
                MethodResponse::response(id, payload, max_response_bytes),
            ));
        }
        answers
    }
}

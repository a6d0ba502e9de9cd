//! `GET /health` on the JSON-RPC port, for load balancers: 200 while the node follows the chain,
//! 503 when its committed head is older than [`STALL_BLOCK_TIMES`] block times. That covers a
//! node that stopped committing (stalled) and one still catching up after a restart (behind): in
//! both, the newest block it serves was made too long ago. A chain still at its genesis block is
//! judged from when this node started instead (the genesis was usually made long before): its
//! first block is final only once its child is certified, a block time or so after start-up. A
//! node with no committed block at all is filling its database by state sync: 503 `syncing`.

use http::{Method, Response, StatusCode, header};
use jsonrpsee::{
    core::BoxError,
    server::{HttpBody, HttpRequest},
};
use kestrel_storage::{
    ChainView as _, StorageError, Store,
    snapshot::{chunk_count, restore::RestoreProgress},
};
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};
use tower::{Layer, Service};

pub const HEALTH_PATH: &str = "/health";
/// A head older than this many block times means the node is not following the chain. Ten
/// leaves room for a slow commit (~1 s for a large block) and the header's 1 s resolution.
pub const STALL_BLOCK_TIMES: u64 = 10;

/// The verdict and the JSON body that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: StatusCode,
    pub body: String,
}

/// Judges a head made at `head_ms`, at wall-clock `now_ms`.
pub fn judge(head: u64, head_ms: u64, now_ms: u64, max_age_ms: u64) -> Health {
    let age_ms = now_ms.saturating_sub(head_ms);
    let (status, word) = if age_ms <= max_age_ms {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stalled")
    };
    let body = serde_json::json!({
        "status": word,
        "head": head,
        "head_age_ms": age_ms,
        "max_age_ms": max_age_ms,
    })
    .to_string();
    Health { status, body }
}

/// A node without a committed block yet: one filling its database by state sync (`restore`:
/// how far it is, once the first chunks are in).
pub fn syncing(restore: Option<RestoreProgress>) -> Health {
    let mut body = serde_json::json!({ "status": "syncing", "mode": "state" });
    if let Some(p) = restore {
        body["target"] = p.target.number.into();
        body["chunks_done"] = p.chunks_done.into();
        body["chunks"] = chunk_count(p.target.depth).into();
    }
    Health {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: body.to_string(),
    }
}

#[derive(Clone)]
pub struct HealthLayer {
    pub store: Arc<Store>,
    pub max_age_ms: u64,
    /// When this node started, in ms since the Unix epoch.
    pub started_ms: u64,
}

impl<S> Layer<S> for HealthLayer {
    type Service = HealthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HealthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HealthService<S> {
    inner: S,
    layer: HealthLayer,
}

impl HealthLayer {
    /// Judges the store's head, read with its header in one read transaction: the pipeline's
    /// committed head lags a state sync's base block, whose header alone the store holds.
    fn check(&self) -> Health {
        let read = self.store.view(|r| -> Result<_, StorageError> {
            let Some(head) = r.head()? else {
                return Ok(None);
            };
            Ok(Some((head, r.header(head)?)))
        });
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match read {
            Ok(Ok(None)) => syncing(self.store.restore_progress().ok().flatten()),
            Ok(Ok(Some((head, Some(header))))) => {
                // The header has second resolution: the head may be up to 1 s younger.
                let mut head_ms = header.timestamp.saturating_mul(1000);
                if head == 0 {
                    head_ms = head_ms.max(self.started_ms);
                }
                judge(head, head_ms, now_ms, self.max_age_ms)
            }
            // A head the store cannot show is not a node to send traffic to.
            other => Health {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: serde_json::json!({
                    "status": "error",
                    "error": format!("{other:?}"),
                })
                .to_string(),
            },
        }
    }
}

impl<S, B> Service<HttpRequest<B>> for HealthService<S>
where
    S: Service<HttpRequest<B>, Response = Response<HttpBody>>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<HttpBody>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        if request.method() != Method::GET || request.uri().path() != HEALTH_PATH {
            let fut = self.inner.call(request);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let health = self.layer.check();
        let response = Response::builder()
            .status(health.status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(HttpBody::from(health.body))
            .map_err(BoxError::from);
        Box::pin(async move { response })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_head_is_healthy_old_head_is_not() {
        let now_ms = 1_000_000_000;
        let fresh = judge(7, now_ms - 1_000, now_ms, 5_000);
        assert_eq!(fresh.status, StatusCode::OK);
        assert!(fresh.body.contains(r#""status":"ok""#), "{}", fresh.body);
        let old = judge(7, now_ms - 6_000, now_ms, 5_000);
        assert_eq!(old.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(old.body.contains(r#""head_age_ms":6000"#), "{}", old.body);
    }

    #[test]
    fn a_node_without_a_block_is_syncing() {
        let h = syncing(None);
        assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(h.body.contains(r#""status":"syncing""#), "{}", h.body);
        let h = syncing(Some(RestoreProgress {
            target: kestrel_storage::snapshot::restore::RestoreTarget {
                number: 10_500,
                state_root: Default::default(),
                depth: 2,
            },
            chunks_done: 17,
        }));
        assert!(
            h.body.contains(r#""chunks":256"#) && h.body.contains(r#""target":10500"#),
            "{}",
            h.body
        );
    }

    #[test]
    fn head_from_the_future_counts_as_fresh() {
        // Clock skew between the proposer and this node must not read as a stall.
        assert_eq!(judge(1, 2_000_000, 1_000_000, 5_000).status, StatusCode::OK);
    }
}

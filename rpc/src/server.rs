//! The HTTP server: an accept loop of our own around jsonrpsee's tower service (jsonrpsee's
//! "custom accept loop" pattern), so that what jsonrpsee's own loop cannot bound is bounded:
//!
//! - connections, in total and per IP address, counted from accept to close (jsonrpsee counts
//!   requests in flight, so 1,000 sockets each stalled in a body held all of its places);
//! - the time to send a request's headers (hyper's header read timeout, which also closes idle
//!   keep-alive connections) and its body;
//! - the memory of request bodies in flight, over all connections and per IP address;
//! - oversized bodies, chunked ones too, answered 413.
//!
//! Every HTTP request then carries a [`Caller`] (its IP and its execution budget) into the
//! extensions of each of its calls.

use crate::{
    error::CODE_LIMIT_EXCEEDED,
    limits::{Caller, ConnectionSlot, Connections, Refused, RpcLimits},
    metrics::{self as m, Rejection},
    slots::ExecutionBudget,
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use jsonrpsee::{
    core::BoxError,
    server::{HttpBody, HttpRequest, HttpResponse, StopHandle},
};
use parking_lot::Mutex;
use std::{collections::HashMap, convert::Infallible, net::IpAddr, sync::Arc, time::Duration};
use tokio::net::{TcpListener, TcpStream};

/// Connections the kernel queues before they are accepted. std's 128 overflowed under a burst
/// of a few hundred connects, and each overflow costs the client a 1 s SYN retry; the kernel caps
/// it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What every connection shares.
pub(crate) struct Shared {
    connections: Arc<Connections>,
    header_timeout: Duration,
    body: BodyLimits,
    batch_execution_budget: Duration,
}

impl Shared {
    pub fn new(limits: &RpcLimits, body: BodyLimits) -> Arc<Self> {
        Arc::new(Self {
            connections: Connections::new(limits.connections_max, limits.connections_per_ip_max),
            header_timeout: limits.header_timeout,
            body,
            batch_execution_budget: limits.batch_execution_budget,
        })
    }
}

/// Binds `addr` for the server.
pub(crate) fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std does: a restarted node can bind its port while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves connections from `listener` until `stop`, each with the service `make_service` builds.
pub(crate) async fn serve<S, F>(
    listener: TcpListener,
    make_service: F,
    shared: Arc<Shared>,
    stop: StopHandle,
) where
    F: Fn(StopHandle) -> S,
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let stopped = stop.clone().shutdown();
    tokio::pin!(stopped);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(target: "rpc::server", %err, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        match shared.connections.admit(peer.ip()) {
            Ok(slot) => {
                let service = make_service(stop.clone());
                tokio::spawn(serve_connection(
                    socket,
                    slot,
                    peer.ip(),
                    service,
                    shared.clone(),
                    stop.clone(),
                ));
            }
            Err(refused) => refuse(socket, refused),
        }
    }
}

/// Answers a connection over a limit and closes it. The answer is one small write that fits the
/// socket's buffer; a client that already sent its request may see a reset instead.
fn refuse(socket: TcpStream, refused: Refused) {
    let (status, reason, message) = match refused {
        Refused::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Connections,
            "too many connections",
        ),
        Refused::PerIp => (
            StatusCode::TOO_MANY_REQUESTS,
            Rejection::ConnectionsPerIp,
            "too many connections from this IP address",
        ),
    };
    m::rejected(reason);
    let body = error_json(CODE_LIMIT_EXCEEDED, message);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.try_write(response.as_bytes());
}

async fn serve_connection<S>(
    socket: TcpStream,
    _slot: ConnectionSlot,
    ip: IpAddr,
    service: S,
    shared: Arc<Shared>,
    stop: StopHandle,
) where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let _ = socket.set_nodelay(true);
    let header_timeout = shared.header_timeout;
    let handler = service_fn(move |request| {
        let service = service.clone();
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(request, ip, service, &shared).await) }
    });
    // HTTP/1 only: each connection has at most one request in flight, which is what the
    // connection limits count on. JSON-RPC clients speak HTTP/1.1.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(socket), handler);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.shutdown() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        if err.is_timeout() {
            m::rejected(Rejection::HeaderTimeout);
        }
        tracing::debug!(target: "rpc::server", %ip, %err, "connection closed");
    }
}

/// One HTTP request: its body read within the limits, then handed to jsonrpsee.
async fn handle<S>(
    request: hyper::Request<Incoming>,
    ip: IpAddr,
    mut service: S,
    shared: &Shared,
) -> HttpResponse
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let (body, _reserved) = match shared.body.read(ip, &parts.headers, body).await {
        Ok(read) => read,
        Err(err) => {
            m::rejected(err.rejection());
            return err.response(&shared.body);
        }
    };
    parts.extensions.insert(Caller {
        ip,
        budget: ExecutionBudget::new(shared.batch_execution_budget),
    });
    let request = HttpRequest::from_parts(parts, HttpBody::from(body));
    // The body's share of the budget is held (`_reserved`) until the answer is ready: jsonrpsee
    // parses the calls out of it and they borrow from it while they run.
    match service.call(request).await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(target: "rpc::server", %err, "request failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                crate::error::CODE_INTERNAL,
                "internal error",
            )
        }
    }
}

/// Request body limits: size, time and the memory of bodies in flight, in all and per IP.
pub(crate) struct BodyLimits {
    max_bytes: u32,
    timeout: Duration,
    budget_bytes: u64,
    per_ip_bytes: u64,
    /// Bytes held in all, and by each IP address holding any.
    held: Mutex<(u64, HashMap<IpAddr, u64>)>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body too large")]
    TooLarge,
    #[error("request bodies in flight exceed the memory budget")]
    OverBudget,
    #[error("request bodies in flight from one IP address exceed its share of the budget")]
    OverIpShare,
    #[error("request body not received in time")]
    Timeout,
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

impl BodyLimits {
    pub fn new(max_bytes: u32, limits: &RpcLimits) -> Self {
        m::set_body_budget_used(0);
        Self {
            max_bytes,
            timeout: limits.body_timeout,
            budget_bytes: limits.body_budget_bytes,
            per_ip_bytes: limits.body_budget_per_ip_bytes,
            held: Mutex::default(),
        }
    }

    /// Reads the whole body within the time limit, holding its bytes against the budgets: all of
    /// a declared length at once (so an oversized request is refused before it sends a byte), a
    /// chunked body as it arrives.
    async fn read(
        &self,
        ip: IpAddr,
        headers: &HeaderMap,
        mut body: Incoming,
    ) -> Result<(Vec<u8>, Reserved<'_>), BodyError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|len| len.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > u64::from(self.max_bytes)) {
            return Err(BodyError::TooLarge);
        }
        let mut reserved = Reserved {
            limits: self,
            ip,
            bytes: 0,
        };
        let declared = declared.unwrap_or(0);
        reserved.grow(declared)?;
        let mut bytes = Vec::with_capacity(declared as usize);
        let read = async {
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue; // trailers
                };
                let len = bytes.len() + data.len();
                if len > self.max_bytes as usize {
                    return Err(BodyError::TooLarge);
                }
                reserved.grow(len as u64)?;
                bytes.extend_from_slice(&data);
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| BodyError::Timeout)??;
        Ok((bytes, reserved))
    }
}

/// Bytes of the body budgets held by one request.
struct Reserved<'a> {
    limits: &'a BodyLimits,
    ip: IpAddr,
    bytes: u64,
}

impl Reserved<'_> {
    /// Holds `total` bytes in all (never fewer than already held): within its IP's share first,
    /// so that one address cannot take the whole budget from the others.
    fn grow(&mut self, total: u64) -> Result<(), BodyError> {
        let Some(more) = total.checked_sub(self.bytes).filter(|more| *more > 0) else {
            return Ok(());
        };
        let limits = self.limits;
        let mut held = limits.held.lock();
        let (all, by_ip) = &mut *held;
        let from_ip = by_ip.get(&self.ip).copied().unwrap_or(0);
        if from_ip + more > limits.per_ip_bytes {
            return Err(BodyError::OverIpShare);
        }
        if *all + more > limits.budget_bytes {
            return Err(BodyError::OverBudget);
        }
        *all += more;
        by_ip.insert(self.ip, from_ip + more);
        self.bytes = total;
        m::set_body_budget_used(*all);
        Ok(())
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.limits.held.lock();
        let (all, by_ip) = &mut *held;
        *all -= self.bytes;
        let from_ip = by_ip
            .get_mut(&self.ip)
            .expect("held bytes are counted per IP");
        *from_ip -= self.bytes;
        if *from_ip == 0 {
            by_ip.remove(&self.ip);
        }
        m::set_body_budget_used(*all);
    }
}

impl BodyError {
    fn rejection(&self) -> Rejection {
        match self {
            Self::TooLarge => Rejection::BodyTooLarge,
            Self::OverBudget => Rejection::BodyBudget,
            Self::OverIpShare => Rejection::BodyBudgetPerIp,
            Self::Timeout => Rejection::BodyTimeout,
            Self::Read(_) => Rejection::BodyRead,
        }
    }

    /// The answer: an HTTP status a proxy understands, a JSON-RPC error a client can show, and
    /// the connection closed (the rest of the body is never read).
    fn response(&self, limits: &BodyLimits) -> HttpResponse {
        match self {
            Self::TooLarge => {
                let mut response = jsonrpsee::server::http::response::too_large(limits.max_bytes);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Self::OverBudget => {
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    // jsonrpsee's "server is busy": the same request may succeed later.
                    jsonrpsee::types::error::SERVER_IS_BUSY_CODE,
                    "server busy: request bodies in flight exceed the memory budget, retry later",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::OverIpShare => error_response(
                StatusCode::TOO_MANY_REQUESTS,
                CODE_LIMIT_EXCEEDED,
                "request bodies in flight from this IP address exceed its share of the memory budget",
            ),
            Self::Timeout => error_response(
                StatusCode::REQUEST_TIMEOUT,
                CODE_LIMIT_EXCEEDED,
                &format!(
                    "request body not received within {}",
                    crate::error::go_duration(limits.timeout)
                ),
            ),
            Self::Read(_) => error_response(
                StatusCode::BAD_REQUEST,
                jsonrpsee::types::error::PARSE_ERROR_CODE,
                "request body could not be read",
            ),
        }
    }
}

fn error_json(code: i32, message: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

fn error_response(status: StatusCode, code: i32, message: &str) -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(error_json(code, message)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

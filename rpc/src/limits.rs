//! The limits that keep one client from shutting others out or exhausting the node's memory:
//! their configuration ([`RpcLimits`]), the count of open connections per IP
//! ([`Connections`]) and the per-IP call rate ([`RateLimiter`], applied to every call by the
//! [`RateLimit`] middleware). `server` enforces the connection and body limits, `slots` the
//! execution-time ones. docs/SECURITY.md lists each with its default and what it answers.

use crate::{error::RpcError, metrics as m};
use jsonrpsee::{
    core::{
        middleware::{Batch, Notification, RpcServiceT},
        server::MethodResponse,
    },
    types::{ErrorObject, Request},
};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

/// Most open connections.
pub const CONNECTIONS_MAX: u32 = 1000;
/// Most open connections from one IP address.
pub const CONNECTIONS_PER_IP_MAX: u32 = 64;
/// Time a client has to send a request's headers, from the connection's start or the end of the
/// previous response (so it also closes idle keep-alive connections).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to send a request's body once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of request bodies held at once, over all connections.
pub const BODY_BUDGET_BYTES: u64 = 256 * 1024 * 1024;
/// Of those, how many one IP address may hold: four bodies of the largest size.
pub const BODY_BUDGET_PER_IP_BYTES: u64 = 64 * 1024 * 1024;
/// JSON-RPC calls per second per IP address (each call of a batch counts), and the burst.
pub const CALLS_PER_S_PER_IP: u32 = 20_000;
/// EVM time of one `eth_call` or `eth_estimateGas` (geth's `--rpc.evmtimeout`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// EVM time of all the calls of one HTTP request (a batch) together.
pub const BATCH_EXECUTION_BUDGET: Duration = Duration::from_secs(10);
/// EVM runs (`eth_call`, `eth_estimateGas`) and block scans (`eth_getLogs`, `eth_feeHistory`) at
/// once; more wait. Two cores are shared with the pipeline.
pub const EXECUTIONS_MAX: usize = 4;
/// Of those, how many one IP address may hold: the rest stay free for other clients.
pub const EXECUTIONS_PER_IP_MAX: usize = 2;
/// MDBX read transactions RPC holds at once; more wait.
pub const DB_READERS_MAX: usize = 64;
/// Read transactions the pipeline's stages (execution, state root, ingress, validator driver)
/// may hold beside RPC's: RPC's bound plus this must fit MDBX's reader table.
const DB_READERS_PIPELINE: usize = 32;
/// Per-IP rate buckets kept: past this, buckets that have refilled (the same as absent) are
/// dropped, so many source addresses cannot grow the map without bound.
const RATE_BUCKETS_MAX: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcLimits {
    pub connections_max: u32,
    pub connections_per_ip_max: u32,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub body_budget_bytes: u64,
    pub body_budget_per_ip_bytes: u64,
    /// Zero: no limit.
    pub calls_per_s_per_ip: u32,
    pub call_timeout: Duration,
    pub batch_execution_budget: Duration,
    pub executions_max: usize,
    pub executions_per_ip_max: usize,
    pub db_readers_max: usize,
}

impl Default for RpcLimits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            connections_per_ip_max: CONNECTIONS_PER_IP_MAX,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            body_budget_bytes: BODY_BUDGET_BYTES,
            body_budget_per_ip_bytes: BODY_BUDGET_PER_IP_BYTES,
            calls_per_s_per_ip: CALLS_PER_S_PER_IP,
            call_timeout: CALL_TIMEOUT,
            batch_execution_budget: BATCH_EXECUTION_BUDGET,
            executions_max: EXECUTIONS_MAX,
            executions_per_ip_max: EXECUTIONS_PER_IP_MAX,
            db_readers_max: DB_READERS_MAX,
        }
    }
}

impl RpcLimits {
    /// Refuses limits that would stop the server from serving anyone, or that MDBX cannot honour.
    pub fn check(&self) -> Result<(), RpcError> {
        let invalid = |what: &str| Err(RpcError::InvalidLimits(what.to_owned()));
        if self.connections_max == 0 || self.connections_per_ip_max == 0 {
            return invalid("connection limits must be positive");
        }
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            return invalid("header and body timeouts must be positive");
        }
        if self.body_budget_per_ip_bytes == 0
            || self.body_budget_per_ip_bytes > self.body_budget_bytes
        {
            return invalid("the body budget per IP must be between 1 and the body budget");
        }
        if self.call_timeout.is_zero() || self.batch_execution_budget.is_zero() {
            return invalid("the call timeout and the batch execution budget must be positive");
        }
        if self.executions_per_ip_max == 0 || self.executions_per_ip_max > self.executions_max {
            return invalid("executions per IP must be between 1 and the executions limit");
        }
        let readers_max = kestrel_storage::READERS_MAX as usize - DB_READERS_PIPELINE;
        if self.db_readers_max == 0 || self.db_readers_max > readers_max {
            return Err(RpcError::InvalidLimits(format!(
                "database readers must be between 1 and {readers_max}"
            )));
        }
        Ok(())
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`RpcLimits::connections_max`] connections are open.
    Full,
    /// Its IP address has [`RpcLimits::connections_per_ip_max`] open.
    PerIp,
}

/// Open connections, in total and per IP address.
pub(crate) struct Connections {
    max: u32,
    per_ip_max: u32,
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// One admitted connection; dropping it frees its place.
pub(crate) struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    pub fn new(max: u32, per_ip_max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_ip_max,
            open: Mutex::default(),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut open = self.open.lock();
        let (total, per_ip) = &mut *open;
        if *total >= self.max {
            return Err(Refused::Full);
        }
        let from_ip = per_ip.entry(ip).or_default();
        if *from_ip >= self.per_ip_max {
            return Err(Refused::PerIp);
        }
        *from_ip += 1;
        *total += 1;
        m::set_open_connections(*total);
        Ok(ConnectionSlot {
            connections: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock();
        let (total, per_ip) = &mut *open;
        *total -= 1;
        let from_ip = per_ip
            .get_mut(&self.ip)
            .expect("an open slot's IP is counted");
        *from_ip -= 1;
        if *from_ip == 0 {
            per_ip.remove(&self.ip);
        }
        m::set_open_connections(*total);
    }
}

/// A token bucket per IP address: `per_s` calls per second, bursts of up to `per_s` calls.
pub(crate) struct RateLimiter {
    per_s: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, per_s: f64, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * per_s;
        self.tokens = (self.tokens + earned).min(per_s);
        self.at = now;
    }
}

impl RateLimiter {
    /// `per_s` zero: every call is allowed.
    pub fn new(per_s: u32) -> Self {
        Self {
            per_s,
            buckets: Mutex::default(),
        }
    }

    /// Takes one call's token from `ip`'s bucket at time `now`; false if it has none left.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_s == 0 {
            return true;
        }
        let per_s = f64::from(self.per_s);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= RATE_BUCKETS_MAX && !buckets.contains_key(&ip) {
            buckets.retain(|_, bucket| {
                bucket.refill(per_s, now);
                bucket.tokens < per_s
            });
            if buckets.len() >= RATE_BUCKETS_MAX {
                // Every bucket is in use: rather than grow, let the newcomer through unmetered.
                return true;
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: per_s,
            at: now,
        });
        bucket.refill(per_s, now);
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Whether `ip` has a call left at time `now` (taking none).
    pub fn has_tokens(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_s == 0 {
            return true;
        }
        let per_s = f64::from(self.per_s);
        self.buckets.lock().get_mut(&ip).is_none_or(|bucket| {
            bucket.refill(per_s, now);
            bucket.tokens >= 1.0
        })
    }

    pub fn per_s(&self) -> u32 {
        self.per_s
    }

    /// EIP-1474's "limit exceeded" for a call over its caller's rate (counted as refused), or
    /// `None`: it goes ahead, and is counted against the rate.
    pub(crate) fn refuse(&self, req: &Request<'_>) -> Option<ErrorObject<'static>> {
        let ip = req.extensions().get::<Caller>()?.ip;
        if self.allow(ip, Instant::now()) {
            return None;
        }
        m::rejected(m::Rejection::Rate);
        Some(ErrorObject::from(RpcError::RateLimited(self.per_s)))
    }
}

/// The client of a request: set by `server` on every HTTP request, and so found in the
/// extensions of each of its calls.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub ip: IpAddr,
    /// EVM time the request's calls may still use together.
    pub budget: Arc<crate::slots::ExecutionBudget>,
}

tokio::task_local! {
    /// The IP address of the caller whose call is being answered, set by [`RateLimit`] around
    /// each call: what every method shares (database readers) is shared fairly without each
    /// method taking the request's extensions.
    pub(crate) static CALLER_IP: IpAddr;
}

/// RPC middleware answering calls over their IP's rate with EIP-1474's "limit exceeded", and
/// running the others with [`CALLER_IP`] set.
#[derive(Clone)]
pub(crate) struct RateLimit<S> {
    pub inner: S,
    pub limiter: Arc<RateLimiter>,
}

impl<S> RpcServiceT for RateLimit<S>
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
        let ip = req.extensions().get::<Caller>().map(|caller| caller.ip);
        let refused = self.limiter.refuse(&req).map(|err| (req.id.clone(), err));
        let inner = self.inner.clone();
        async move {
            match (refused, ip) {
                (Some((id, err)), _) => {
                    MethodResponse::error(id, err).with_extensions(req.extensions)
                }
                (None, Some(ip)) => CALLER_IP.scope(ip, inner.call(req)).await,
                (None, None) => inner.call(req).await,
            }
        }
    }

    /// `RpcMetrics` (outside this layer) sends each call of a batch through `call`.
    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.batch(batch)
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn connections_are_limited_per_ip_and_in_total_and_freed_on_drop() {
        let connections = Connections::new(3, 2);
        let a1 = connections.admit(A).unwrap();
        let _a2 = connections.admit(A).unwrap();
        assert_eq!(connections.admit(A).err(), Some(Refused::PerIp));
        let _b1 = connections.admit(B).unwrap();
        assert_eq!(connections.admit(B).err(), Some(Refused::Full));
        drop(a1);
        assert!(
            connections.admit(A).is_ok(),
            "a closed connection frees its place"
        );
        assert_eq!(connections.open.lock().1.len(), 2);
    }

    #[test]
    fn each_ip_gets_its_rate_and_refills_over_time() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        assert!(
            (0..10).all(|_| limiter.allow(A, start)),
            "a burst of the rate"
        );
        assert!(!limiter.allow(A, start));
        assert!(limiter.allow(B, start), "another IP has its own bucket");
        let later = start + Duration::from_millis(300);
        assert_eq!((0..10).filter(|_| limiter.allow(A, later)).count(), 3);
        let unlimited = RateLimiter::new(0);
        assert!((0..100_000).all(|_| unlimited.allow(A, start)));
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        RpcLimits::default().check().unwrap();
        let no_share = RpcLimits {
            executions_per_ip_max: EXECUTIONS_MAX + 1,
            ..RpcLimits::default()
        };
        assert!(no_share.check().is_err());
        let too_many_readers = RpcLimits {
            db_readers_max: kestrel_storage::READERS_MAX as usize,
            ..RpcLimits::default()
        };
        let err = too_many_readers.check().unwrap_err().to_string();
        assert!(err.contains("database readers"), "{err}");
    }
}

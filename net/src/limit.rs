//! The limits on a full node's connection: which kinds it may send, and how much.
//!
//! A full node is any key the operator let in (`full_nodes_max`), not a validator, so nothing it
//! sends is trusted to be bounded: its sync requests each cost the validator an archive read and
//! its forwarded transactions an ingress admission. Each connection gets token buckets (bursts
//! of one second's worth); a connection that runs a bucket dry is closed rather than slowed,
//! since an honest full node polls and forwards far below the rates.

use std::time::Instant;

use crate::error::ConnectionError;
use crate::frame::Kind;

/// A token bucket: `rate` tokens a second, holding at most one second's worth.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    fn take(&mut self, amount: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens < amount {
            return false;
        }
        self.tokens -= amount;
        true
    }
}

/// What one full-node connection may still send.
pub(crate) struct FullNodeLimits {
    requests: Bucket,
    tx_bytes: Bucket,
}

impl FullNodeLimits {
    pub(crate) fn new(requests_per_s: u32, tx_bytes_per_s: u32, now: Instant) -> Self {
        Self {
            requests: Bucket::new(requests_per_s, now),
            tx_bytes: Bucket::new(tx_bytes_per_s, now),
        }
    }

    /// Whether a full node may send this message now; the error closes its connection.
    pub(crate) fn admit(
        &mut self,
        kind: Kind,
        len: usize,
        now: Instant,
    ) -> Result<(), ConnectionError> {
        match kind {
            Kind::SyncRequest if self.requests.take(1.0, now) => Ok(()),
            Kind::SyncRequest => Err(ConnectionError::RateLimited("sync requests per second")),
            Kind::TxForward if self.tx_bytes.take(len as f64, now) => Ok(()),
            Kind::TxForward => Err(ConnectionError::RateLimited(
                "forwarded transaction bytes per second",
            )),
            // Consensus is the validators' business; a sync response answers a request, and
            // nobody asks a full node.
            Kind::Consensus | Kind::SyncResponse => Err(ConnectionError::KindNotAllowed(kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn full_nodes_send_requests_and_transactions_within_their_rates_only() {
        let start = Instant::now();
        let mut limits = FullNodeLimits::new(10, 1_000, start);
        for _ in 0..10 {
            limits.admit(Kind::SyncRequest, 20, start).unwrap();
        }
        assert!(matches!(
            limits.admit(Kind::SyncRequest, 20, start),
            Err(ConnectionError::RateLimited(_))
        ));
        // A tenth of a second later, one more request's worth has come back.
        let later = start + Duration::from_millis(100);
        limits.admit(Kind::SyncRequest, 20, later).unwrap();
        assert!(limits.admit(Kind::SyncRequest, 20, later).is_err());

        limits.admit(Kind::TxForward, 1_000, start).unwrap();
        assert!(limits.admit(Kind::TxForward, 1, start).is_err());
        limits
            .admit(Kind::TxForward, 500, start + Duration::from_millis(500))
            .unwrap();

        for kind in [Kind::Consensus, Kind::SyncResponse] {
            assert!(matches!(
                limits.admit(kind, 1, later),
                Err(ConnectionError::KindNotAllowed(k)) if k == kind
            ));
        }
    }
}

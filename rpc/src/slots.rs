//! Fair shares of the execution slots, and the execution time a request may use.
//!
//! EVM runs and block scans are few at a time ([`RpcLimits::executions_max`]): they compete with
//! the pipeline for two cores. One IP address may hold at most
//! [`RpcLimits::executions_per_ip_max`] of them, so a batch of slow calls leaves the rest to
//! other clients; its further calls wait for its own slots, not in the queue others wait in.
//!
//! [`RpcLimits::executions_max`]: crate::RpcLimits::executions_max
//! [`RpcLimits::executions_per_ip_max`]: crate::RpcLimits::executions_per_ip_max

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct ExecutionSlots {
    all: Arc<Semaphore>,
    per_ip: usize,
    /// Each client's own slots; present while one of its requests holds or waits for a slot.
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A held execution slot. Fields drop in order: the slots first, then the share, which
/// forgets a client that holds and awaits nothing more.
pub(crate) struct ExecutionPermit {
    _all: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
    _share: ClientShare,
}

/// A request's claim on its client's semaphore.
struct ClientShare {
    slots: Arc<ExecutionSlots>,
    ip: IpAddr,
    semaphore: Arc<Semaphore>,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut clients = self.slots.clients.lock();
        // The map's reference and this one: nobody else holds or awaits this client's slots
        // (every other holder has a share too, cloned under this lock).
        if Arc::strong_count(&self.semaphore) == 2 {
            clients.remove(&self.ip);
        }
    }
}

impl ExecutionSlots {
    pub fn new(all: usize, per_ip: usize) -> Arc<Self> {
        assert!(
            (1..=all).contains(&per_ip),
            "executions per IP {per_ip} of {all}"
        );
        Arc::new(Self {
            all: Arc::new(Semaphore::new(all)),
            per_ip,
            clients: Mutex::default(),
        })
    }

    /// Waits for one of `ip`'s slots, then for one of all; cancel-safe.
    pub async fn acquire(self: &Arc<Self>, ip: IpAddr) -> ExecutionPermit {
        let semaphore = self
            .clients
            .lock()
            .entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_ip)))
            .clone();
        let share = ClientShare {
            slots: self.clone(),
            ip,
            semaphore,
        };
        let own = share.semaphore.clone().acquire_owned().await;
        let all = self.all.clone().acquire_owned().await;
        ExecutionPermit {
            _all: all.expect("the slots are never closed"),
            _own: own.expect("the slots are never closed"),
            _share: share,
        }
    }
}

/// The EVM time the calls of one HTTP request (one call, or a batch) may still use together.
#[derive(Debug)]
pub(crate) struct ExecutionBudget {
    remaining_ns: AtomicU64,
}

impl ExecutionBudget {
    pub fn new(total: Duration) -> Arc<Self> {
        Arc::new(Self {
            remaining_ns: AtomicU64::new(total.as_nanos().try_into().unwrap_or(u64::MAX)),
        })
    }

    pub fn remaining(&self) -> Duration {
        Duration::from_nanos(self.remaining_ns.load(Ordering::Relaxed))
    }

    pub fn spend(&self, used: Duration) {
        let used = used.as_nanos().try_into().unwrap_or(u64::MAX);
        let _ = self
            .remaining_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left.saturating_sub(used))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    async fn waits(acquire: impl Future<Output = ExecutionPermit>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), acquire)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn one_client_cannot_hold_every_slot() {
        let slots = ExecutionSlots::new(4, 2);
        let a1 = slots.acquire(A).await;
        let _a2 = slots.acquire(A).await;
        assert!(waits(slots.acquire(A)).await, "A holds its share");
        let _b1 = slots.acquire(B).await;
        let _b2 = slots.acquire(B).await;
        assert!(waits(slots.acquire(B)).await);
        drop(a1);
        assert!(
            !waits(slots.acquire(A)).await,
            "A's freed slot is A's again"
        );
    }

    #[tokio::test]
    async fn clients_are_forgotten_when_they_hold_nothing() {
        let slots = ExecutionSlots::new(2, 1);
        let a = slots.acquire(A).await;
        // A cancelled wait leaves nothing behind either.
        assert!(waits(slots.acquire(A)).await);
        assert_eq!(slots.clients.lock().len(), 1);
        drop(a);
        assert!(slots.clients.lock().is_empty());
    }

    #[test]
    fn budget_is_spent_down_to_zero() {
        let budget = ExecutionBudget::new(Duration::from_secs(1));
        budget.spend(Duration::from_millis(400));
        assert_eq!(budget.remaining(), Duration::from_millis(600));
        budget.spend(Duration::from_secs(5));
        assert_eq!(budget.remaining(), Duration::ZERO);
    }
}

//! The network: a monoio runtime on its own thread, and a handle for ordinary threads.
//!
//! Inside the runtime (one thread, so state is `Rc`/`RefCell`): an accept loop, a dialer for
//! each peer with a higher key than ours, and one task per connection that reads frames into the
//! inbound channel and writes the peer's queue out.
//!
//! Only the lower key of a pair dials, so two validators never race two connections into
//! existence: at most one carries traffic at a time and each peer's messages stay in order. When
//! the dialer reconnects, the new connection replaces the old (see [`Local::activate`]).
//!
//! A key outside `peers` is a full node (`PeerClass::FullNode`), admitted up to `full_nodes_max`
//! connections: its queue exists while it is connected, `broadcast` never reaches it, and its
//! reader lets through only sync requests and forwarded transactions within its rates
//! (`limit.rs`), closing the connection on anything else.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::config::NetConfig;
use crate::error::{ConnectionError, HandshakeError, NetError, SendError};
use crate::frame::FrameReader;
use crate::frame::{self, FrameType, Kind};
use crate::handshake::{self, Identity};
use crate::limit::FullNodeLimits;
use crate::metrics::{
    DIAL_FAILURES_TOTAL, FULL_NODES_CONNECTED, FULL_NODES_LABEL, HANDSHAKE_FAILURES_TOTAL,
    PEERS_CONNECTED, PREAUTH_CONNECTIONS, PREAUTH_REJECTED_TOTAL, PROTOCOL_ERRORS_TOTAL,
    RECEIVED_BYTES_TOTAL, REPLACED_CONNECTIONS_TOTAL, SENT_BYTES_TOTAL,
};
use crate::peer::{PeerClass, PeerId};
use crate::preauth::{Pool, PreAuthSlots};
use crate::queue::PeerQueue;
use crate::signal::Signal;

/// Payload bytes a writer takes off the queue for one `write` (at least one message).
const WRITE_BATCH_MAX_BYTES: usize = 256 * 1024;
/// How long a reader waits before retrying a full inbound channel, growing to the max.
const INBOUND_RETRY_MIN: Duration = Duration::from_millis(1);
const INBOUND_RETRY_MAX: Duration = Duration::from_millis(10);
/// How long a closing connection waits for the batch in flight or for the peer's half-close.
const GRACEFUL_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A message from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub peer: PeerId,
    /// Decided at the peer's handshake: a full node's messages are only ever sync requests and
    /// forwarded transactions.
    pub class: PeerClass,
    pub kind: Kind,
    pub payload: Bytes,
}

/// Which monoio driver runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    /// The epoll fallback, where io_uring is missing or forbidden (old kernel, seccomp).
    Epoll,
}

/// State shared by the handle's threads and the runtime thread.
struct Shared {
    local_id: PeerId,
    frame_payload_max_bytes: u32,
    /// The validators' queues, for the network's life.
    queues: HashMap<PeerId, Arc<PeerQueue>>,
    /// The connected full nodes' queues, each from its connection to its disconnection.
    full_nodes: Mutex<HashMap<PeerId, Arc<PeerQueue>>>,
    connected: Mutex<BTreeSet<PeerId>>,
    connected_count: Arc<AtomicUsize>,
    shutdown: Signal,
}

/// Sends to validators from any thread. Cheap to clone.
#[derive(Clone)]
pub struct NetworkHandle {
    shared: Arc<Shared>,
}

impl Shared {
    fn queue(&self, peer: &PeerId) -> Option<Arc<PeerQueue>> {
        match self.queues.get(peer) {
            Some(queue) => Some(queue.clone()),
            None => self.full_nodes.lock().get(peer).cloned(),
        }
    }
}

impl NetworkHandle {
    /// Queues `payload` for `peer` (a validator, or a full node while it is connected). Never blocks. A full consensus lane drops its oldest message
    /// and accepts this one; a full bulk lane refuses this one (`QueueFull`). Delivery is
    /// at most once: a message written to a connection that then breaks is lost.
    pub fn send(&self, peer: &PeerId, kind: Kind, payload: Bytes) -> Result<(), SendError> {
        self.check_len(&payload)?;
        let queue = self
            .shared
            .queue(peer)
            .ok_or(SendError::UnknownPeer(*peer))?;
        queue.push(kind, payload)
    }

    /// Queues `payload` for every other validator (never a full node). Fails only for a payload over the cap or after
    /// shutdown; a peer whose bulk lane is full misses the message (counted in
    /// `kestrel_net_outbound_dropped_total`).
    pub fn broadcast(&self, kind: Kind, payload: Bytes) -> Result<(), SendError> {
        self.check_len(&payload)?;
        for queue in self.shared.queues.values() {
            match queue.push(kind, payload.clone()) {
                Ok(()) | Err(SendError::QueueFull(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Validators with an authenticated connection right now.
    pub fn connected_peers(&self) -> BTreeSet<PeerId> {
        self.shared.connected.lock().clone()
    }

    /// Full nodes with an authenticated connection right now.
    pub fn connected_full_nodes(&self) -> Vec<PeerId> {
        self.shared.full_nodes.lock().keys().copied().collect()
    }

    /// Our own validator id.
    pub fn local_id(&self) -> PeerId {
        self.shared.local_id
    }

    fn check_len(&self, payload: &Bytes) -> Result<(), SendError> {
        let max = self.shared.frame_payload_max_bytes;
        if payload.len() > max as usize {
            return Err(SendError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok(())
    }
}

/// The running network. Dropping it (or [`Network::shutdown`]) closes every connection and the
/// listener and joins the runtime thread.
pub struct Network {
    handle: NetworkHandle,
    local_addr: SocketAddr,
    driver: Driver,
    thread: Option<JoinHandle<()>>,
}

impl Network {
    /// Binds `config.listen_addr` and starts. Inbound messages arrive on the returned channel
    /// (bounded by `inbound_queue_max`; when it is full, connections stop reading).
    pub fn start(config: NetConfig) -> Result<(Network, Receiver<Inbound>), NetError> {
        let listener = std::net::TcpListener::bind(config.listen_addr).map_err(NetError::Listen)?;
        Self::start_on(listener, config)
    }

    /// Starts on an already bound listener (`config.listen_addr` is not used): for port 0 in tests
    /// and for sockets handed over by a supervisor.
    pub fn start_on(
        listener: std::net::TcpListener,
        config: NetConfig,
    ) -> Result<(Network, Receiver<Inbound>), NetError> {
        if config.consensus_queue_max == 0
            || config.bulk_queue_max == 0
            || config.inbound_queue_max == 0
        {
            return Err(NetError::Config("queue bounds must be at least 1"));
        }
        if config.preauth_max == 0 || config.preauth_per_ip_max == 0 {
            return Err(NetError::Config(
                "pre-authentication slot bounds must be at least 1",
            ));
        }
        if config.full_nodes_max > 0
            && (config.full_node_requests_per_s == 0
                || config.full_node_tx_bytes_per_s < config.full_node_frame_max_bytes)
        {
            // A full node's largest frame must fit in its byte bucket, or it could never be sent.
            return Err(NetError::Config(
                "full_node_requests_per_s must be > 0 and full_node_tx_bytes_per_s at least \
                 full_node_frame_max_bytes",
            ));
        }
        if config.handshake_timeout.is_zero() {
            return Err(NetError::Config("handshake_timeout must be > 0"));
        }
        if config.backoff_initial.is_zero() || config.backoff_max < config.backoff_initial {
            return Err(NetError::Config(
                "backoff_initial must be > 0 and <= backoff_max",
            ));
        }
        let mut ids: Vec<_> = config.peers.iter().map(|p| p.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            // Two dialers for one peer would keep replacing each other's connection.
            return Err(NetError::Config("a validator is listed twice in peers"));
        }
        // The monoio listener needs a non-blocking socket for the epoll driver.
        listener.set_nonblocking(true).map_err(NetError::Listen)?;
        let local_addr = listener.local_addr().map_err(NetError::Listen)?;
        let local_id = config.local_id();
        let queues = config
            .peers
            .iter()
            .filter(|p| p.id != local_id)
            .map(|p| {
                (
                    p.id,
                    Arc::new(PeerQueue::new(
                        p.id,
                        PeerClass::Validator,
                        config.consensus_queue_max,
                        config.bulk_queue_max,
                    )),
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            local_id,
            frame_payload_max_bytes: config.frame_payload_max_bytes,
            queues,
            full_nodes: Mutex::new(HashMap::new()),
            connected: Mutex::new(BTreeSet::new()),
            connected_count: config.connected_count.clone(),
            shutdown: Signal::default(),
        });
        let (inbound_tx, inbound_rx) = crossbeam_channel::bounded(config.inbound_queue_max);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kestrel-net".into())
            .spawn(move || run_runtime(listener, config, thread_shared, inbound_tx, ready_tx))
            .map_err(NetError::Runtime)?;
        let driver = match ready_rx.recv() {
            Ok(Ok(driver)) => driver,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(NetError::Runtime(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(NetError::Runtime(std::io::Error::other(
                    "network thread died while starting",
                )));
            }
        };
        let network = Network {
            handle: NetworkHandle { shared },
            local_addr,
            driver,
            thread: Some(thread),
        };
        Ok((network, inbound_rx))
    }

    pub fn handle(&self) -> NetworkHandle {
        self.handle.clone()
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Closes everything and waits for the runtime thread to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let shared = &self.handle.shared;
        shared.shutdown.fire();
        for queue in shared.queues.values() {
            queue.close();
        }
        for queue in shared.full_nodes.lock().values() {
            queue.close();
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the network thread is a bug; surface it on the owner's thread unless
            // that one is already unwinding (a second panic would abort).
            if let Err(panic) = thread.join()
                && !std::thread::panicking()
            {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_runtime(
    listener: std::net::TcpListener,
    config: NetConfig,
    shared: Arc<Shared>,
    inbound: Sender<Inbound>,
    ready: Sender<std::io::Result<Driver>>,
) {
    let driver = if monoio::utils::detect_uring() {
        Driver::IoUring
    } else {
        Driver::Epoll
    };
    // No registered buffers are used, so io_uring needs no raised `ulimit -l`.
    let mut runtime = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        info!(target: "net::runtime", ?driver, addr = ?listener.local_addr().ok(), id = %shared.local_id, "network started");
        let _ = ready.send(Ok(driver));
        let local = Rc::new(Local::new(config, shared, inbound));
        local.run(listener).await;
    });
}

/// Runtime-thread state.
struct Local {
    config: NetConfig,
    shared: Arc<Shared>,
    inbound: Sender<Inbound>,
    /// Id of the connection carrying each connected peer's traffic.
    active: RefCell<HashMap<PeerId, u64>>,
    next_conn_id: Cell<u64>,
    preauth: PreAuthSlots,
    tasks: Rc<TaskCount>,
}

impl Local {
    fn new(config: NetConfig, shared: Arc<Shared>, inbound: Sender<Inbound>) -> Self {
        // Reserved slots for the validators that dial us (the lower keys), at their configured
        // addresses: they get in however many other addresses flood the general pool. Nobody
        // a full node follows dials it.
        let local_id = shared.local_id;
        let dialers = config
            .peers
            .iter()
            .filter(|p| !config.full_node && p.id < local_id)
            .map(|p| p.addr.ip());
        let preauth = PreAuthSlots::new(config.preauth_max, config.preauth_per_ip_max, dialers);
        for pool in [Pool::General, Pool::Reserved] {
            metrics::gauge!(PREAUTH_CONNECTIONS, "pool" => pool.as_str()).set(0.0);
        }
        metrics::gauge!(FULL_NODES_CONNECTED).set(0.0);
        Self {
            config,
            shared,
            inbound,
            active: RefCell::new(HashMap::new()),
            next_conn_id: Cell::new(1),
            preauth,
            tasks: Rc::new(TaskCount::default()),
        }
    }

    async fn run(self: Rc<Self>, listener: TcpListener) {
        let local_id = self.shared.local_id;
        let full_node = self.config.full_node;
        for peer in self
            .config
            .peers
            .iter()
            .filter(|p| full_node || p.id > local_id)
        {
            self.spawn(self.clone().dial_loop(peer.id, peer.addr));
        }
        loop {
            monoio::select! {
                _ = self.shared.shutdown.wait() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => self.clone().accepted(stream, addr),
                    Err(e) => {
                        warn!(target: "net::listener", error = %e, "accept failed");
                        monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
        drop(listener);
        self.tasks.idle().await;
        info!(target: "net::runtime", "network stopped");
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        let guard = TaskGuard::new(self.tasks.clone());
        monoio::spawn(async move {
            task.await;
            drop(guard);
        });
    }

    fn accepted(self: Rc<Self>, mut stream: TcpStream, addr: SocketAddr) {
        let slot = match self.preauth.acquire(addr.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                // Closed before a byte is read or written: a flood costs an accept and a close.
                debug!(target: "net::listener", %addr, limit = refused.as_str(), "no pre-authentication slot, closing");
                metrics::counter!(PREAUTH_REJECTED_TOTAL, "limit" => refused.as_str()).increment(1);
                return;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(target: "net::listener", %addr, error = %e, "set_nodelay failed, closing");
            return;
        }
        self.preauth_gauge(slot.pool());
        let this = self.clone();
        self.spawn(async move {
            let mut reader = FrameReader::new();
            // Under the handshake timeout: a connection that does not finish in time is closed
            // and its slot freed.
            let result = this.handshake(&mut stream, &mut reader, None).await;
            let pool = slot.pool();
            drop(slot);
            this.preauth_gauge(pool);
            match result {
                Some(Ok((peer, class))) => this.connection(stream, reader, peer, class).await,
                Some(Err(e)) => handshake_failed(&e, addr),
                None => {}
            }
        });
    }

    fn preauth_gauge(&self, pool: Pool) {
        metrics::gauge!(PREAUTH_CONNECTIONS, "pool" => pool.as_str())
            .set(self.preauth.held(pool) as f64);
    }

    /// A configured peer is a validator; any other key a full node while there is room for one
    /// (a full node already connected may reconnect: its new connection replaces the old).
    fn classify(&self, peer: &PeerId) -> Result<PeerClass, HandshakeError> {
        if self.shared.queues.contains_key(peer) {
            return Ok(PeerClass::Validator);
        }
        if self.config.full_nodes_max == 0 {
            return Err(HandshakeError::UnknownPeer(*peer));
        }
        let full_nodes = self.shared.full_nodes.lock();
        if full_nodes.len() < self.config.full_nodes_max || full_nodes.contains_key(peer) {
            Ok(PeerClass::FullNode)
        } else {
            Err(HandshakeError::FullNodesMax(*peer))
        }
    }

    /// The handshake under its timeout; `None` on shutdown.
    async fn handshake(
        &self,
        stream: &mut TcpStream,
        reader: &mut FrameReader,
        expected: Option<PeerId>,
    ) -> Option<Result<(PeerId, PeerClass), HandshakeError>> {
        let classify = |peer: &PeerId| self.classify(peer);
        let me = Identity {
            key: &self.config.secret_key,
            id: self.shared.local_id,
            network_id: self.config.network_id,
            classify: &classify,
        };
        let timed = monoio::time::timeout(
            self.config.handshake_timeout,
            handshake::run(stream, reader, &me, expected),
        );
        monoio::select! {
            _ = self.shared.shutdown.wait() => None,
            result = timed => Some(result.unwrap_or(Err(HandshakeError::Timeout))),
        }
    }

    /// Keeps a connection to `peer` (a higher key) up, with backoff between attempts.
    async fn dial_loop(self: Rc<Self>, peer: PeerId, addr: SocketAddr) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let failures = metrics::counter!(DIAL_FAILURES_TOTAL, "peer" => peer.to_string());
        while !self.shared.shutdown.is_fired() {
            match self.dial(peer, addr).await {
                Some(Ok((stream, reader))) => {
                    backoff.reset();
                    self.connection(stream, reader, peer, PeerClass::Validator)
                        .await;
                }
                Some(Err(e)) => {
                    failures.increment(1);
                    debug!(target: "net::dial", %peer, %addr, error = %e, "dial failed");
                }
                None => return,
            }
            monoio::select! {
                _ = monoio::time::sleep(backoff.next_delay()) => {}
                _ = self.shared.shutdown.wait() => return,
            }
        }
    }

    /// Connects and authenticates; `None` on shutdown.
    async fn dial(
        &self,
        peer: PeerId,
        addr: SocketAddr,
    ) -> Option<Result<(TcpStream, FrameReader), HandshakeError>> {
        let connect =
            monoio::time::timeout(self.config.handshake_timeout, TcpStream::connect_addr(addr));
        let mut stream = monoio::select! {
            _ = self.shared.shutdown.wait() => return None,
            connected = connect => match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Some(Err(HandshakeError::Io(e))),
                Err(_) => return Some(Err(HandshakeError::Timeout)),
            },
        };
        // Consensus messages are small and latency-bound: no Nagle delay.
        if let Err(e) = stream.set_nodelay(true) {
            return Some(Err(HandshakeError::Io(e)));
        }
        let mut reader = FrameReader::new();
        let verified = self.handshake(&mut stream, &mut reader, Some(peer)).await?;
        Some(verified.map(|_| (stream, reader)))
    }

    /// Makes `conn_id` the peer's active connection and returns its queue. An older one is
    /// replaced (its writer sees the queue change owner and stops): the peer only redials after
    /// losing its connection, so the old one is dead on its side. A full node gets a queue of its
    /// own while connected; `None` when the full-node slots filled up during its handshake.
    fn activate(&self, peer: PeerId, class: PeerClass, conn_id: u64) -> Option<Arc<PeerQueue>> {
        let queue = match class {
            PeerClass::Validator => self.shared.queues[&peer].clone(),
            PeerClass::FullNode => {
                let mut full_nodes = self.shared.full_nodes.lock();
                if !full_nodes.contains_key(&peer) && full_nodes.len() >= self.config.full_nodes_max
                {
                    return None;
                }
                let queue = full_nodes
                    .entry(peer)
                    .or_insert_with(|| {
                        Arc::new(PeerQueue::new(
                            peer,
                            PeerClass::FullNode,
                            self.config.consensus_queue_max,
                            self.config.bulk_queue_max,
                        ))
                    })
                    .clone();
                metrics::gauge!(FULL_NODES_CONNECTED).set(full_nodes.len() as f64);
                queue
            }
        };
        if self.active.borrow_mut().insert(peer, conn_id).is_some() {
            metrics::counter!(REPLACED_CONNECTIONS_TOTAL).increment(1);
        }
        queue.set_owner(conn_id);
        if class == PeerClass::Validator {
            let mut connected = self.shared.connected.lock();
            connected.insert(peer);
            self.shared
                .connected_count
                .store(connected.len(), Ordering::Relaxed);
            metrics::gauge!(PEERS_CONNECTED).set(connected.len() as f64);
        }
        Some(queue)
    }

    fn deactivate(&self, peer: PeerId, class: PeerClass, queue: &PeerQueue, conn_id: u64) {
        queue.release(conn_id);
        let mut active = self.active.borrow_mut();
        if active.get(&peer) != Some(&conn_id) {
            return;
        }
        active.remove(&peer);
        match class {
            PeerClass::Validator => {
                let mut connected = self.shared.connected.lock();
                connected.remove(&peer);
                self.shared
                    .connected_count
                    .store(connected.len(), Ordering::Relaxed);
                metrics::gauge!(PEERS_CONNECTED).set(connected.len() as f64);
            }
            // What was queued for a full node is dropped with it: it re-asks after reconnecting.
            PeerClass::FullNode => {
                let mut full_nodes = self.shared.full_nodes.lock();
                if let Some(queue) = full_nodes.remove(&peer) {
                    queue.close();
                }
                metrics::gauge!(FULL_NODES_CONNECTED).set(full_nodes.len() as f64);
            }
        }
    }

    /// Runs an authenticated connection until it fails, is replaced, or the network stops.
    ///
    /// A replaced connection is closed gracefully so nothing already sent on it is lost: its
    /// writer stops between batches, it half-closes, and it keeps reading (and delivering) until
    /// the peer half-closes too. Reads are never cancelled while the
    /// connection is still in use: a cancelled read may drop bytes the kernel already returned.
    async fn connection(
        &self,
        stream: TcpStream,
        mut reader: FrameReader,
        peer: PeerId,
        class: PeerClass,
    ) {
        let conn_id = self.next_conn_id.get();
        self.next_conn_id.set(conn_id + 1);
        let Some(queue) = self.activate(peer, class, conn_id) else {
            metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => "full_nodes_max").increment(1);
            debug!(target: "net::conn", %peer, "full-node slots taken during its handshake, closing");
            return;
        };
        debug!(target: "net::conn", %peer, class = class.as_str(), conn_id, "connected");
        let (mut read_half, mut write_half) = stream.into_split();
        let read = self.read_loop(&mut read_half, &mut reader, peer, class);
        let mut read = std::pin::pin!(read);
        let mut write = Box::pin(self.write_loop(&mut write_half, &queue, peer, class, conn_id));
        let shutdown = &self.shared.shutdown;
        let ended = monoio::select! {
            r = &mut read => match r {
                // The peer half-closed: finish the batch in flight, then half-close too.
                Ok(()) => {
                    queue.release(conn_id);
                    monoio::select! {
                        w = &mut write => w,
                        _ = monoio::time::sleep(GRACEFUL_CLOSE_TIMEOUT) => Ok(()),
                        _ = shutdown.wait() => Ok(()),
                    }
                }
                Err(e) => Err(e),
            },
            // The writer stops without error when a newer connection took over (or on shutdown).
            w = &mut write => match w {
                Ok(()) => {
                    debug!(target: "net::conn", %peer, conn_id, "replaced, draining");
                    drop(write);
                    self.drain(&mut write_half, read.as_mut()).await
                }
                Err(e) => Err(e),
            },
            _ = shutdown.wait() => Ok(()),
        };
        match ended {
            Ok(()) => debug!(target: "net::conn", %peer, conn_id, "disconnected"),
            Err(e) => {
                if let Some(reason) = e.protocol_reason() {
                    metrics::counter!(PROTOCOL_ERRORS_TOTAL, "reason" => reason, "class" => class.as_str())
                        .increment(1);
                }
                info!(target: "net::conn", %peer, class = class.as_str(), conn_id, error = %e, "connection closed");
            }
        }
        self.deactivate(peer, class, &queue, conn_id);
    }

    /// Half-closes and reads until the peer half-closes too, bounded in time.
    async fn drain(
        &self,
        write_half: &mut impl AsyncWriteRent,
        read: Pin<&mut impl Future<Output = Result<(), ConnectionError>>>,
    ) -> Result<(), ConnectionError> {
        write_half.shutdown().await?;
        monoio::select! {
            r = read => r,
            _ = monoio::time::sleep(GRACEFUL_CLOSE_TIMEOUT) => Ok(()),
            _ = self.shared.shutdown.wait() => Ok(()),
        }
    }

    async fn read_loop(
        &self,
        read_half: &mut impl AsyncReadRent,
        reader: &mut FrameReader,
        peer: PeerId,
        class: PeerClass,
    ) -> Result<(), ConnectionError> {
        let received = metrics::counter!(RECEIVED_BYTES_TOTAL, "peer" => peer_label(&peer, class));
        let (max, mut limits) = match class {
            PeerClass::Validator => (self.config.frame_payload_max_bytes, None),
            PeerClass::FullNode => (
                self.config.full_node_frame_max_bytes,
                Some(FullNodeLimits::new(
                    self.config.full_node_requests_per_s,
                    self.config.full_node_tx_bytes_per_s,
                    Instant::now(),
                )),
            ),
        };
        loop {
            let Some((frame_type, payload)) = reader
                .next(read_half, max, |n| received.increment(n as u64))
                .await?
            else {
                return Ok(());
            };
            let FrameType::App(kind) = frame_type else {
                return Err(ConnectionError::UnexpectedFrame);
            };
            if let Some(limits) = &mut limits {
                limits.admit(kind, payload.len(), Instant::now())?;
            }
            self.deliver(Inbound {
                peer,
                class,
                kind,
                payload,
            })
            .await;
        }
    }

    /// Hands a message to the node, waiting while the channel is full: this connection stops
    /// reading, TCP fills up, and the sender's queue applies its drop policy.
    async fn deliver(&self, mut message: Inbound) {
        let mut retry = INBOUND_RETRY_MIN;
        loop {
            match self.inbound.try_send(message) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    message = back;
                    monoio::time::sleep(retry).await;
                    retry = (retry * 2).min(INBOUND_RETRY_MAX);
                }
                // The node dropped its receiver: it is shutting down and wants nothing more.
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    async fn write_loop(
        &self,
        write_half: &mut impl AsyncWriteRent,
        queue: &PeerQueue,
        peer: PeerId,
        class: PeerClass,
        conn_id: u64,
    ) -> Result<(), ConnectionError> {
        let sent = metrics::counter!(SENT_BYTES_TOTAL, "peer" => peer_label(&peer, class));
        let mut out = Vec::new();
        while let Some(batch) = queue.next_batch(conn_id, WRITE_BATCH_MAX_BYTES).await {
            out.clear();
            for (kind, payload) in &batch {
                frame::encode(FrameType::App(*kind), payload, &mut out);
            }
            let (result, buf) = write_half.write_all(out).await;
            out = buf;
            sent.increment(result? as u64);
        }
        Ok(())
    }
}

/// A validator's series are its own; all full nodes share one (anyone can make a key).
fn peer_label(peer: &PeerId, class: PeerClass) -> String {
    match class {
        PeerClass::Validator => peer.to_string(),
        PeerClass::FullNode => FULL_NODES_LABEL.to_string(),
    }
}

fn handshake_failed(e: &HandshakeError, addr: SocketAddr) {
    metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => e.reason()).increment(1);
    debug!(target: "net::handshake", %addr, error = %e, "handshake failed");
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random, so peers that
/// lost each other at the same moment do not redial in lockstep.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base / 2 + base.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// Counts live tasks so shutdown can wait until every socket is closed.
#[derive(Default)]
struct TaskCount {
    live: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

impl TaskCount {
    async fn idle(&self) {
        poll_fn(|cx| {
            if self.live.get() == 0 {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

struct TaskGuard(Rc<TaskCount>);

impl TaskGuard {
    fn new(count: Rc<TaskCount>) -> Self {
        count.live.set(count.live.get() + 1);
        Self(count)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
        if self.0.live.get() == 0
            && let Some(waker) = self.0.waker.borrow_mut().take()
        {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<NetworkHandle>();
        send_sync::<Network>();
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base / 2 && *delay <= base,
                "{delay:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}

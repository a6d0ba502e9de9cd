//! The transport over real loopback sockets and the real monoio driver (io_uring where the
//! kernel allows it). Misbehaving peers are played by a blocking std socket speaking the wire
//! format by hand.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use kestrel_net::frame::{self, FrameType, PROTOCOL_VERSION};
use kestrel_net::handshake::{self, Hello};
use kestrel_net::{
    Inbound, Kind, NetConfig, Network, PeerClass, PeerConfig, PeerId, RESERVED_PER_VALIDATOR,
    SendError,
};
use secp256k1::{PublicKey, SecretKey};

const NETWORK_ID: u64 = 1337;
const WAIT: Duration = Duration::from_secs(10);

fn secret(seed: u8) -> SecretKey {
    SecretKey::from_byte_array(&[seed; 32]).unwrap()
}

fn id_of(key: &SecretKey) -> PeerId {
    PeerId::from(PublicKey::from_secret_key_global(key))
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn config(key: SecretKey, addr: SocketAddr, peers: &[(SecretKey, SocketAddr)]) -> NetConfig {
    let peers = peers
        .iter()
        .map(|(k, a)| PeerConfig {
            id: id_of(k),
            addr: *a,
        })
        .collect();
    let mut config = NetConfig::new(key, NETWORK_ID, addr, peers);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.handshake_timeout = Duration::from_secs(2);
    config
}

/// Listeners and configurations of `n` validators that know each other (seeds 1..=n).
fn validators(n: u8) -> Vec<(TcpListener, NetConfig)> {
    let listeners: Vec<_> = (0..n).map(|_| bind()).collect();
    let set: Vec<_> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (secret(i as u8 + 1), l.local_addr().unwrap()))
        .collect();
    listeners
        .into_iter()
        .zip(&set)
        .map(|(l, (key, addr))| (l, config(*key, *addr, &set)))
        .collect()
}

/// Starts `n` validators that know each other (seeds 1..=n).
fn cluster(n: u8) -> Vec<(Network, Receiver<Inbound>)> {
    validators(n)
        .into_iter()
        .map(|(l, c)| Network::start_on(l, c).unwrap())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn recv(rx: &Receiver<Inbound>) -> Inbound {
    rx.recv_timeout(WAIT).expect("message not delivered")
}

/// A peer played by hand over a blocking socket.
struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawPeer {
    fn connect(addr: SocketAddr) -> Self {
        Self::wrap(TcpStream::connect(addr).unwrap())
    }

    /// Connects from source address `from` (any 127.0.0.x works on Linux's loopback): one
    /// machine plays many hosts.
    fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
            .unwrap();
        socket.connect(&addr.into()).unwrap();
        Self::wrap(socket.into())
    }

    fn wrap(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether the node admitted this connection to the handshake (it sends its Hello at once)
    /// rather than closing it for want of a slot (closed without a byte).
    fn admitted(&mut self) -> bool {
        match self.recv() {
            Some((frame_type, _)) => {
                assert_eq!(frame_type, FrameType::Hello);
                true
            }
            None => false,
        }
    }

    fn send(&mut self, frame_type: FrameType, payload: &[u8]) {
        let mut out = Vec::new();
        frame::encode(frame_type, payload, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    /// The next frame, or `None` once the node has closed the connection.
    fn recv(&mut self) -> Option<(FrameType, Bytes)> {
        loop {
            if let Some(frame) = frame::decode(&mut self.buf, u32::MAX).unwrap() {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed (node did not close the connection?): {e}"),
            }
        }
    }

    /// The node closes the connection, having sent at most its Hello (which a reset may discard).
    fn expect_closed(&mut self) {
        while let Some((frame_type, _)) = self.recv() {
            assert_eq!(
                frame_type,
                FrameType::Hello,
                "node should have closed the connection"
            );
        }
    }

    /// Reads the node's Hello and sends ours, claiming `claimed`.
    fn hello(&mut self, claimed: PeerId, network_id: u64) -> Hello {
        let (frame_type, payload) = self.recv().expect("node sends its Hello first");
        assert_eq!(frame_type, FrameType::Hello);
        let theirs = Hello::decode(&payload).unwrap();
        self.send(
            FrameType::Hello,
            &Hello {
                network_id,
                peer: claimed,
                challenge: [42; 32],
            }
            .encode(),
        );
        theirs
    }

    /// Full handshake as `claimed`, signing with `signer` (the right key or not).
    fn authenticate(&mut self, claimed: PeerId, signer: &SecretKey) -> Option<(FrameType, Bytes)> {
        let theirs = self.hello(claimed, NETWORK_ID);
        let auth = handshake::sign_auth(
            signer,
            NETWORK_ID,
            &theirs.challenge,
            &claimed,
            &theirs.peer,
        );
        self.send(FrameType::Auth, &auth);
        self.recv()
    }
}

/// Seeds 1 and 2 ordered by key: (lower, higher). Only the lower key of a pair dials.
fn ordered_pair() -> (SecretKey, SecretKey) {
    let (a, b) = (secret(1), secret(2));
    if id_of(&a) < id_of(&b) {
        (a, b)
    } else {
        (b, a)
    }
}

/// Node under test (the higher key) whose only peer (the lower key, returned) is at an address
/// nobody listens on, so a raw socket can play it.
fn lone_node() -> (Network, Receiver<Inbound>, SecretKey) {
    lone_node_with(|_| {})
}

fn lone_node_with(tweak: impl FnOnce(&mut NetConfig)) -> (Network, Receiver<Inbound>, SecretKey) {
    let (low, high) = ordered_pair();
    let absent = bind().local_addr().unwrap();
    let listener = bind();
    let mut config = config(high, listener.local_addr().unwrap(), &[(low, absent)]);
    tweak(&mut config);
    let (network, rx) = Network::start_on(listener, config).unwrap();
    (network, rx, low)
}

/// A raw connection to `node` that completed the handshake as the holder of `key`.
fn authenticated(node: &Network, key: &SecretKey) -> RawPeer {
    let mut raw = RawPeer::connect(node.local_addr());
    raw.authenticate(id_of(key), key).expect("node's Auth");
    raw
}

#[test]
fn handshake_connects_and_messages_flow_both_ways() {
    let mut nodes = cluster(2);
    let (b, rx_b) = nodes.pop().unwrap();
    let (a, rx_a) = nodes.pop().unwrap();
    eprintln!("monoio driver: {:?}", a.driver());
    let (ha, hb) = (a.handle(), b.handle());
    wait_until("both connected", || {
        ha.connected_peers().contains(&hb.local_id())
            && hb.connected_peers().contains(&ha.local_id())
    });

    ha.send(&hb.local_id(), Kind::Consensus, Bytes::from_static(b"vote"))
        .unwrap();
    assert_eq!(
        recv(&rx_b),
        Inbound {
            peer: ha.local_id(),
            class: PeerClass::Validator,
            kind: Kind::Consensus,
            payload: Bytes::from_static(b"vote")
        }
    );
    hb.send(&ha.local_id(), Kind::TxForward, Bytes::from_static(b"tx"))
        .unwrap();
    assert_eq!(
        recv(&rx_a),
        Inbound {
            peer: hb.local_id(),
            class: PeerClass::Validator,
            kind: Kind::TxForward,
            payload: Bytes::from_static(b"tx")
        }
    );

    let stranger = id_of(&secret(99));
    assert_eq!(
        ha.send(&stranger, Kind::Consensus, Bytes::new()),
        Err(SendError::UnknownPeer(stranger))
    );
    a.shutdown();
    assert_eq!(
        ha.send(&hb.local_id(), Kind::Consensus, Bytes::new()),
        Err(SendError::Shutdown)
    );
}

#[test]
fn broadcast_reaches_all_four_validators() {
    let nodes = cluster(4);
    let leader = nodes[0].0.handle();
    // Sent before any connection is up: the queues hold it until the handshakes complete.
    leader
        .broadcast(Kind::Consensus, Bytes::from_static(b"proposal"))
        .unwrap();
    for (network, rx) in &nodes[1..] {
        let got = recv(rx);
        assert_eq!(
            (got.peer, got.kind, &got.payload[..]),
            (leader.local_id(), Kind::Consensus, &b"proposal"[..])
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "exactly one copy at {}",
            network.handle().local_id()
        );
    }
}

#[test]
fn impostor_without_the_key_is_rejected() {
    let (node, rx, victim) = lone_node();
    let mut raw = RawPeer::connect(node.local_addr());
    let impostor_key = secret(66);
    // Claims the validator's identity but can only sign with another key.
    let after = raw.authenticate(id_of(&victim), &impostor_key);
    assert_eq!(
        after.map(|(t, _)| t),
        Some(FrameType::Auth),
        "node answers our challenge first"
    );
    raw.expect_closed();
    assert!(node.handle().connected_peers().is_empty());
    assert!(rx.try_recv().is_err());
}

#[test]
fn unknown_key_and_wrong_network_are_rejected_before_auth() {
    let (node, _rx, victim) = lone_node();
    let mut raw = RawPeer::connect(node.local_addr());
    raw.hello(id_of(&secret(77)), NETWORK_ID);
    raw.expect_closed();

    let mut raw = RawPeer::connect(node.local_addr());
    raw.hello(id_of(&victim), NETWORK_ID + 1);
    raw.expect_closed();
    assert!(node.handle().connected_peers().is_empty());
}

/// The `n`th attacker address, 127.0.0.(10 + n): never a validator's (they are on 127.0.0.1
/// or 127.0.0.9 here).
fn attacker(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + u8::try_from(n).unwrap())
}

#[test]
fn silent_sockets_are_bounded_per_address_and_in_total_and_timed_out() {
    let timeout = Duration::from_millis(500);
    let (node, _rx, _) = lone_node_with(|c| {
        c.handshake_timeout = timeout;
        c.preauth_max = 6;
        c.preauth_per_ip_max = 2;
    });
    let addr = node.local_addr();
    let started = Instant::now();
    // One address: two admitted, the third closed at once (per-IP bound).
    let mut silent: Vec<_> = (0..2)
        .map(|_| RawPeer::connect_from(attacker(0), addr))
        .collect();
    assert!(silent.iter_mut().all(RawPeer::admitted));
    assert!(!RawPeer::connect_from(attacker(0), addr).admitted());
    // Two more addresses fill the total of six; a fourth address is closed at once.
    for n in 1..=2 {
        for _ in 0..2 {
            let mut raw = RawPeer::connect_from(attacker(n), addr);
            assert!(raw.admitted());
            silent.push(raw);
        }
    }
    assert!(!RawPeer::connect_from(attacker(3), addr).admitted());
    assert!(started.elapsed() < timeout, "refused before the timeout");
    // The handshake timeout closes every silent one and frees its slot.
    for raw in &mut silent {
        raw.expect_closed();
    }
    assert!(started.elapsed() >= timeout);
    for n in 0..=3 {
        assert!(RawPeer::connect_from(attacker(n), addr).admitted());
    }
}

/// Node A (the higher key) and validator B (the lower key, which dials A), A listing B at
/// `b_listen`. B is started by the caller, after the flood is in place.
fn flooded_pair(
    b_listen: Ipv4Addr,
    tweak: impl FnOnce(&mut NetConfig),
) -> (Network, TcpListener, NetConfig) {
    let (low, high) = ordered_pair();
    let la = bind();
    let lb = TcpListener::bind(SocketAddr::new(IpAddr::V4(b_listen), 0)).unwrap();
    let (a_addr, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut config_a = config(high, a_addr, &[(low, b_addr)]);
    tweak(&mut config_a);
    // B redials fast: the test measures A's admission, not B's backoff.
    let config_b = config(low, b_addr, &[(high, a_addr)]);
    let (a, _rx) = Network::start_on(la, config_a).unwrap();
    (a, lb, config_b)
}

/// Starts B and returns how long it took to authenticate with A.
fn connect_time(a: &Network, lb: TcpListener, config_b: NetConfig) -> (Network, Duration) {
    let started = Instant::now();
    let (b, _rx) = Network::start_on(lb, config_b).unwrap();
    let ha = a.handle();
    wait_until("B authenticated with A", || {
        !ha.connected_peers().is_empty()
    });
    let took = started.elapsed();
    (b, took)
}

#[test]
fn an_idle_and_garbage_flood_from_one_address_does_not_stop_a_validator() {
    // B is listed at 127.0.0.9 but dials from 127.0.0.1: no reserved slot, only the general
    // pool, which the per-IP bound keeps one address from filling.
    let (a, lb, config_b) = flooded_pair(Ipv4Addr::new(127, 0, 0, 9), |c| {
        c.handshake_timeout = Duration::from_secs(30);
    });
    let addr = a.local_addr();
    let mut flood: Vec<_> = (0..200)
        .map(|_| RawPeer::connect_from(attacker(0), addr))
        .collect();
    let admitted = flood
        .iter_mut()
        .map(RawPeer::admitted)
        .filter(|&a| a)
        .count();
    assert_eq!(admitted, kestrel_net::PREAUTH_PER_IP_MAX_DEFAULT);
    // Garbage closes a connection at once; the attacker's reconnections are refused or take the
    // freed slots back, never more than its share.
    for _ in 0..50 {
        let mut raw = RawPeer::connect_from(attacker(0), addr);
        let _ = raw.stream.write_all(b"\xff\xff garbage \r\n\r\n");
    }
    let (_b, took) = connect_time(&a, lb, config_b);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eprintln!("validator authenticated {took:?} after start, one address holding its share");
}

#[test]
fn a_validator_gets_a_reserved_slot_when_many_addresses_fill_the_pool() {
    // B listens on 127.0.0.1 and dials from there: its address has reserved slots.
    let (a, lb, config_b) = flooded_pair(Ipv4Addr::LOCALHOST, |c| {
        c.handshake_timeout = Duration::from_secs(30);
        c.preauth_max = 16;
        c.preauth_per_ip_max = 2;
    });
    let addr = a.local_addr();
    let mut flood: Vec<_> = (0..20)
        .flat_map(|n| (0..3).map(move |_| RawPeer::connect_from(attacker(n), addr)))
        .collect();
    let admitted = flood
        .iter_mut()
        .map(RawPeer::admitted)
        .filter(|&a| a)
        .count();
    assert_eq!(admitted, 16, "the general pool is full");
    assert!(!RawPeer::connect_from(attacker(40), addr).admitted());
    let (_b, took) = connect_time(&a, lb, config_b);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eprintln!("validator authenticated {took:?} after start, general pool full");
    // The reserve is the validator's address's alone, and bounded too: two per validator.
    let mut held: Vec<_> = (0..RESERVED_PER_VALIDATOR)
        .map(|_| RawPeer::connect(addr))
        .collect();
    assert!(held.iter_mut().all(RawPeer::admitted));
    assert!(
        !RawPeer::connect(addr).admitted(),
        "past the reserve, the pool is full"
    );
}

#[test]
fn oversized_frame_closes_the_connection() {
    let (node, rx, peer_key) = lone_node();
    let peer = id_of(&peer_key);
    let mut raw = authenticated(&node, &peer_key);
    wait_until("authenticated", || {
        node.handle().connected_peers().contains(&peer)
    });
    raw.send(FrameType::App(Kind::SyncResponse), b"fits");
    assert_eq!(recv(&rx).payload, Bytes::from_static(b"fits"));

    // Only the header: the node must refuse on the claimed length, not wait for the bytes.
    let cap = kestrel_net::FRAME_PAYLOAD_MAX_BYTES_DEFAULT + 1;
    let mut header = vec![PROTOCOL_VERSION, FrameType::App(Kind::Consensus).to_byte()];
    header.extend_from_slice(&cap.to_be_bytes());
    raw.stream.write_all(&header).unwrap();
    raw.expect_closed();
    wait_until("peer dropped", || {
        node.handle().connected_peers().is_empty()
    });
}

#[test]
fn garbage_closes_the_connection_and_the_node_keeps_serving() {
    let (node, rx, peer_key) = lone_node();
    let mut raw = RawPeer::connect(node.local_addr());
    raw.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    raw.expect_closed();

    // After authenticating, a handshake frame is as wrong as garbage.
    let mut raw = authenticated(&node, &peer_key);
    raw.send(FrameType::Hello, &[0; handshake::HELLO_BYTES]);
    raw.expect_closed();

    let mut raw = authenticated(&node, &peer_key);
    raw.send(FrameType::App(Kind::TxForward), b"still serving");
    assert_eq!(recv(&rx).payload, Bytes::from_static(b"still serving"));
}

#[test]
fn reconnects_after_a_peer_restarts() {
    let mut pair = validators(2);
    let (lb, config_b) = pair.pop().unwrap();
    let (la, config_a) = pair.pop().unwrap();
    let (a, _rx_a) = Network::start_on(la, config_a).unwrap();
    let (b, rx_b) = Network::start_on(lb, config_b.clone()).unwrap();
    let ha = a.handle();
    let b_id = b.handle().local_id();
    ha.send(&b_id, Kind::Consensus, Bytes::from_static(b"before"))
        .unwrap();
    assert_eq!(recv(&rx_b).payload, Bytes::from_static(b"before"));

    b.shutdown();
    wait_until("a notices b is gone", || ha.connected_peers().is_empty());
    // Queued while b is down, delivered once it is back.
    ha.send(&b_id, Kind::Consensus, Bytes::from_static(b"while down"))
        .unwrap();
    let (_b, rx_b) = Network::start(config_b).unwrap();
    assert_eq!(recv(&rx_b).payload, Bytes::from_static(b"while down"));
    assert!(ha.connected_peers().contains(&b_id));
}

#[test]
fn only_the_lower_key_dials() {
    let (low, high) = ordered_pair();
    let high_listener = bind();
    let node_listener = bind();
    let node_addr = node_listener.local_addr().unwrap();
    let set = [
        (low, node_addr),
        (high, high_listener.local_addr().unwrap()),
    ];
    let (node, rx) = Network::start_on(node_listener, config(low, node_addr, &set)).unwrap();
    let high_id = id_of(&high);

    // The node (lower key) dials the higher key, played by hand.
    let (stream, _) = high_listener.accept().unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut dialed = RawPeer {
        stream,
        buf: BytesMut::new(),
    };
    dialed.authenticate(high_id, &high).expect("node's Auth");
    wait_until("connected", || {
        node.handle().connected_peers().contains(&high_id)
    });

    // The higher key dialing the lower one is refused, even with the right key.
    let mut wrong_way = RawPeer::connect(node_addr);
    wrong_way.hello(high_id, NETWORK_ID);
    wrong_way.expect_closed();

    dialed.send(FrameType::App(Kind::Consensus), b"kept");
    assert_eq!(recv(&rx).payload, Bytes::from_static(b"kept"));
    node.handle()
        .send(&high_id, Kind::Consensus, Bytes::from_static(b"reply"))
        .unwrap();
    assert_eq!(
        dialed.recv().map(|(_, p)| p),
        Some(Bytes::from_static(b"reply"))
    );
}

#[test]
fn a_reconnection_replaces_the_old_connection_without_losing_what_it_carried() {
    let (node, rx, peer_key) = lone_node();
    let peer = id_of(&peer_key);
    let mut old = authenticated(&node, &peer_key);
    old.send(FrameType::App(Kind::Consensus), b"on the old connection");

    let mut new = authenticated(&node, &peer_key);
    // The old connection is half-closed by the node; what was sent on it is still delivered.
    old.expect_closed();
    assert_eq!(
        recv(&rx).payload,
        Bytes::from_static(b"on the old connection")
    );
    drop(old);

    node.handle()
        .send(
            &peer,
            Kind::Consensus,
            Bytes::from_static(b"on the new one"),
        )
        .unwrap();
    assert_eq!(
        new.recv().map(|(_, p)| p),
        Some(Bytes::from_static(b"on the new one"))
    );
    assert!(node.handle().connected_peers().contains(&peer));
}

#[test]
fn a_peer_that_does_not_read_costs_bounded_memory_and_never_blocks_senders() {
    let mut pair = validators(2);
    let (lb, mut config_b) = pair.pop().unwrap();
    let (la, mut config_a) = pair.pop().unwrap();
    config_a.consensus_queue_max = 64;
    config_a.bulk_queue_max = 64;
    config_b.inbound_queue_max = 4;
    let (a, _rx_a) = Network::start_on(la, config_a).unwrap();
    let (b, rx_b) = Network::start_on(lb, config_b).unwrap();
    let (ha, b_id) = (a.handle(), b.handle().local_id());
    wait_until("connected", || ha.connected_peers().contains(&b_id));

    // b's node does not read: b's connection stalls, then TCP, then a's queue fills.
    const SENT: u32 = 2_000;
    let started = Instant::now();
    for seq in 0..SENT {
        let mut payload = vec![0u8; 64 * 1024];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        ha.send(&b_id, Kind::Consensus, Bytes::from(payload))
            .unwrap();
    }
    let mut refused = 0;
    for _ in 0..1000 {
        if let Err(e) = ha.send(&b_id, Kind::TxForward, Bytes::from_static(b"tx")) {
            assert_eq!(e, SendError::QueueFull(b_id));
            refused += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sends must not block: {:?}",
        started.elapsed()
    );
    assert!(
        refused >= 1000 - 64,
        "bulk lane is bounded: only {refused} refused"
    );

    // Once b reads again, the newest consensus messages arrive (drop-oldest), in order.
    let mut received = Vec::new();
    while received.last() != Some(&(SENT - 1)) {
        let message = recv(&rx_b);
        if message.kind == Kind::Consensus {
            received.push(u32::from_be_bytes(message.payload[..4].try_into().unwrap()));
        }
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert!(
        (received.len() as u32) < SENT,
        "the oldest were dropped, {} of {SENT} arrived",
        received.len()
    );
}

#[test]
fn a_validator_listed_twice_is_a_config_error() {
    let addr = bind().local_addr().unwrap();
    let peer = (secret(2), addr);
    let result = Network::start_on(bind(), config(secret(1), addr, &[peer, peer]));
    assert!(matches!(result, Err(kestrel_net::NetError::Config(_))));
}

/// A validator (seed 1) admitting `full_nodes_max` full nodes, with `tweak` applied, and its
/// validator peer (seed 2) at an address nobody listens on.
fn validator_admitting(
    full_nodes_max: usize,
    tweak: impl FnOnce(&mut NetConfig),
) -> (Network, Receiver<Inbound>) {
    let listener = bind();
    let absent = bind().local_addr().unwrap();
    let mut config = config(
        secret(1),
        listener.local_addr().unwrap(),
        &[(secret(2), absent)],
    );
    config.full_nodes_max = full_nodes_max;
    tweak(&mut config);
    Network::start_on(listener, config).unwrap()
}

/// A full node (key `seed`) following `validator` through the real network.
fn full_node(seed: u8, validator: &Network) -> (Network, Receiver<Inbound>) {
    let mut config = config(
        secret(seed),
        bind().local_addr().unwrap(),
        &[(secret(1), validator.local_addr())],
    );
    config.full_node = true;
    Network::start(config).unwrap()
}

#[test]
fn full_nodes_connect_up_to_the_limit_and_never_get_broadcasts() {
    let (validator, rx) = validator_admitting(1, |_| {});
    let handle = validator.handle();
    let (full, full_rx) = full_node(50, &validator);
    let full_id = full.handle().local_id();
    wait_until("full node connected", || {
        handle.connected_full_nodes() == vec![full_id]
    });
    // Its connection is not a validator's: consensus does not count it among the peers.
    assert!(handle.connected_peers().is_empty());
    assert!(full.handle().connected_peers().contains(&handle.local_id()));

    full.handle()
        .send(
            &handle.local_id(),
            Kind::SyncRequest,
            Bytes::from_static(b"blocks?"),
        )
        .unwrap();
    let got = recv(&rx);
    assert_eq!((got.peer, got.class), (full_id, PeerClass::FullNode));
    handle
        .send(&full_id, Kind::SyncResponse, Bytes::from_static(b"blocks"))
        .unwrap();
    assert_eq!(recv(&full_rx).payload, Bytes::from_static(b"blocks"));
    handle
        .broadcast(Kind::Consensus, Bytes::from_static(b"proposal"))
        .unwrap();
    assert!(
        full_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a broadcast reached a full node"
    );

    // The one slot is taken: a second full node is refused at the handshake, before our Auth.
    let mut second = RawPeer::connect(validator.local_addr());
    assert!(
        second
            .authenticate(id_of(&secret(51)), &secret(51))
            .is_none()
    );
    assert_eq!(handle.connected_full_nodes(), vec![full_id]);

    // Once the first one leaves, its slot is free again.
    drop(full);
    wait_until("full node gone", || {
        handle.connected_full_nodes().is_empty()
    });
    let (_third, _) = full_node(52, &validator);
    wait_until("another full node connected", || {
        handle.connected_full_nodes().len() == 1
    });
}

#[test]
fn without_full_node_slots_other_keys_are_refused() {
    let (validator, _rx) = validator_admitting(0, |_| {});
    let mut raw = RawPeer::connect(validator.local_addr());
    assert!(raw.authenticate(id_of(&secret(60)), &secret(60)).is_none());
    assert!(validator.handle().connected_full_nodes().is_empty());
}

/// A full node played by hand: authenticated as key `seed`, then sending what it likes.
fn raw_full_node(validator: &Network, seed: u8) -> RawPeer {
    let mut raw = authenticated(validator, &secret(seed));
    wait_until("full node connected", || {
        validator
            .handle()
            .connected_full_nodes()
            .contains(&id_of(&secret(seed)))
    });
    raw.send(FrameType::App(Kind::TxForward), b"txs");
    raw
}

#[test]
fn a_full_node_sending_consensus_or_sync_responses_is_disconnected_unheard() {
    let (validator, rx) = validator_admitting(4, |_| {});
    for kind in [Kind::Consensus, Kind::SyncResponse] {
        let mut raw = raw_full_node(&validator, 70);
        assert_eq!(recv(&rx).kind, Kind::TxForward);
        raw.send(FrameType::App(kind), b"vote for me");
        raw.expect_closed();
        wait_until("full node dropped", || {
            validator.handle().connected_full_nodes().is_empty()
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "a full node's {kind:?} message was delivered"
        );
    }
}

#[test]
fn a_full_node_over_its_frame_cap_or_rates_is_disconnected() {
    let (validator, rx) = validator_admitting(4, |c| {
        c.full_node_frame_max_bytes = 1024;
        c.full_node_tx_bytes_per_s = 4096;
        c.full_node_requests_per_s = 20;
    });
    // A frame over the full nodes' cap, far under the validators'.
    let mut raw = raw_full_node(&validator, 80);
    assert_eq!(recv(&rx).kind, Kind::TxForward);
    raw.send(FrameType::App(Kind::TxForward), &[0; 1025]);
    raw.expect_closed();

    // A flood of sync requests: the burst (a second's worth) passes, then it is cut off.
    let mut raw = raw_full_node(&validator, 81);
    assert_eq!(recv(&rx).kind, Kind::TxForward);
    for _ in 0..100 {
        let mut out = Vec::new();
        frame::encode(FrameType::App(Kind::SyncRequest), b"blocks?", &mut out);
        if raw.stream.write_all(&out).is_err() {
            break;
        }
    }
    raw.expect_closed();
    let delivered = rx.try_iter().count();
    assert!(
        (20..=22).contains(&delivered),
        "{delivered} flooded requests delivered"
    );

    // Forwarded transactions past the byte rate.
    let mut raw = raw_full_node(&validator, 82);
    assert_eq!(recv(&rx).kind, Kind::TxForward);
    for _ in 0..8 {
        let mut out = Vec::new();
        frame::encode(FrameType::App(Kind::TxForward), &[0; 1000], &mut out);
        if raw.stream.write_all(&out).is_err() {
            break;
        }
    }
    raw.expect_closed();
    wait_until("full nodes dropped", || {
        validator.handle().connected_full_nodes().is_empty()
    });
}

//! Targets `net_frames` and `net_handshake`: the transport's first contact with a peer's bytes.

use bytes::BytesMut;
use kestrel_net::frame::{self, FRAME_HEADER_BYTES, FrameReader};
use kestrel_net::handshake::{self, HELLO_BYTES, Hello, Identity};
use kestrel_net::{HandshakeError, PeerClass, PeerId};
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use secp256k1::{PublicKey, SecretKey};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// `net_frames`: the first two bytes pick the payload cap (as the handshake's small one or the
/// application's large one would be); the rest is fed to the decoder in pieces whose sizes come
/// from the input too, as reads off a socket would.
pub fn frames(data: &[u8]) {
    let Some((&[cap_byte, chunk_byte], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let payload_max = match cap_byte % 3 {
        0 => handshake::HANDSHAKE_FRAME_MAX_BYTES,
        1 => u32::from(chunk_byte) * 16,
        _ => u32::MAX,
    };
    let chunk = usize::from(chunk_byte % 64) + 1;
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match frame::decode(&mut buf, payload_max) {
                Ok(Some((frame_type, payload))) => {
                    assert!(payload.len() as u64 <= u64::from(payload_max));
                    let taken = before - buf.len();
                    assert_eq!(taken, FRAME_HEADER_BYTES + payload.len());
                    // The frame re-encodes to exactly the bytes it was cut from.
                    let mut again = Vec::new();
                    frame::encode(frame_type, &payload, &mut again);
                    assert_eq!(&again[..], &stream[consumed..consumed + taken]);
                    consumed += taken;
                    if frame_type == frame::FrameType::Hello {
                        let _ = Hello::decode(&payload);
                    }
                }
                // A complete header was checked before any payload byte was buffered: nothing
                // waits on more than the cap.
                Ok(None) => {
                    assert!(buf.len() < FRAME_HEADER_BYTES + payload_max as usize);
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

/// The validator keys of the handshake target: we are `ours`, the peer claims one of the others.
fn key(byte: u8) -> (SecretKey, PeerId) {
    let secret = SecretKey::from_byte_array(&[byte; 32]).expect("valid key");
    (
        secret,
        PeerId::from(PublicKey::from_secret_key_global(&secret)),
    )
}

pub const NETWORK_ID: u64 = 1337;

/// The Hello a known peer (key byte 2) would send: the corpus starts from it.
pub fn peer_hello() -> Vec<u8> {
    let hello = Hello {
        network_id: NETWORK_ID,
        peer: key(2).1,
        challenge: [7; 32],
    };
    let mut out = Vec::new();
    frame::encode(frame::FrameType::Hello, &hello.encode(), &mut out);
    out
}

/// `net_handshake`: the first byte says whether we dialed (and whom we expect) or accepted; the
/// rest is everything the peer sends. The handshake must end, with an error or a peer, after
/// writing at most our Hello and Auth, and never accept a peer that did not sign our challenge.
pub fn handshake(data: &[u8]) {
    let Some((&mode, peer_bytes)) = data.split_first() else {
        return;
    };
    let (ours_key, ours) = key(1);
    let known: Vec<PeerId> = [2, 3, 4].iter().map(|b| key(*b).1).collect();
    let classify = |peer: &PeerId| {
        if known.contains(peer) {
            Ok(PeerClass::Validator)
        } else {
            Err(HandshakeError::UnknownPeer(*peer))
        }
    };
    let me = Identity {
        key: &ours_key,
        id: ours,
        network_id: NETWORK_ID,
        classify: &classify,
    };
    let expected = match mode % 3 {
        0 => None,
        1 => Some(known[0]),
        _ => Some(known[1]),
    };
    let mut stream = Transcript {
        input: peer_bytes,
        output: Vec::new(),
    };
    let mut reader = FrameReader::new();
    let result = block_on(handshake::run(&mut stream, &mut reader, &me, expected));
    // We wrote our Hello first, and an Auth only after a Hello from a known peer.
    assert!(stream.output.len() >= FRAME_HEADER_BYTES + HELLO_BYTES);
    assert!(stream.output.len() <= 2 * FRAME_HEADER_BYTES + HELLO_BYTES + handshake::AUTH_BYTES);
    // Our challenge is random: nobody can have signed it ahead of time.
    assert!(
        result.is_err(),
        "authenticated a peer that never saw our challenge"
    );
}

/// The handshake's futures never wait on anything but the stream, which is always ready.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the handshake waited on an in-memory stream"),
    }
}

/// A connection whose peer sent `input` and then closed; what we write is kept.
struct Transcript<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl AsyncReadRent for Transcript<'_> {
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.input.read(buf)
    }

    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.input.readv(buf)
    }
}

impl AsyncWriteRent for Transcript<'_> {
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        // SAFETY: `IoBuf` promises `bytes_init` initialised bytes at `read_ptr`; `buf` is owned
        // here and outlives the slice.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        self.output.extend_from_slice(bytes);
        let n = bytes.len();
        std::future::ready((Ok(n), buf))
    }

    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        // The handshake writes whole frames with `write_all`, never vectors.
        std::future::ready((
            Err(std::io::Error::other("writev is not used by the handshake")),
            buf,
        ))
    }

    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

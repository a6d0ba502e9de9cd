//! Target `block_payload`: what a peer or an imported chain hands the node as a block. The first
//! byte picks the decoder, the rest is its input:
//! 0. a block's RLP as import reads it (`import::decode_block`), then its header checked against
//!    the dev genesis and its senders recovered;
//! 1. a proposal's payload (`validator::payload::Payload::decode`) and its static rules;
//! 2. a validator message envelope, a sync request or a sync response (`validator::wire`);
//! 3. a consensus message (`bft::Unverified<Message>::decode`).

use crate::{payload::Payload, tx, wire};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Bytes, keccak256};
use alloy_rlp::Encodable;
use kestrel_consensus::bft::{Message, Unverified};
use kestrel_pipeline::import::{decode_block, recover_senders, validate_header};
use kestrel_types::ChainSpec;
use std::sync::LazyLock;

static SPEC: LazyLock<ChainSpec> = LazyLock::new(ChainSpec::dev);

pub fn decode(data: &[u8]) {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => import(input),
        1 => payload(input),
        2 => validator_wire(input),
        _ => consensus_message(input),
    }
}

fn import(rlp: &[u8]) {
    let Ok(block) = decode_block(rlp) else {
        return;
    };
    // Keep what you received: a block is named by the hash of the header it arrived with.
    let mut header = Vec::new();
    block.header.encode(&mut header);
    assert_eq!(block.header.hash_slow(), keccak256(&header));
    let genesis = kestrel_storage::genesis_header(&SPEC);
    let _ = validate_header(&SPEC, &genesis, &block.header);
    let decoded: Vec<_> = block
        .body
        .transactions
        .into_iter()
        .map(Into::into)
        .collect();
    let _ = recover_senders(&decoded);
}

fn payload(bytes: &[u8]) {
    let Ok(payload) = Payload::decode(Bytes::copy_from_slice(bytes)) else {
        return;
    };
    assert_eq!(
        payload.hash(),
        keccak256(bytes),
        "a payload is named by its bytes"
    );
    assert_eq!(&payload.bytes()[..], bytes);
    let fees = payload.fees();
    assert!(
        fees.gas_committed <= fees.gas_limit,
        "decoded a payload over its gas limit"
    );
    for raw_tx in payload.txs() {
        // Each transaction travels with the bytes it was signed in.
        assert_eq!(raw_tx.hash(), keccak256(raw_tx.encoded()));
        assert_eq!(
            raw_tx.tx().encoded_2718(),
            raw_tx.raw(),
            "kept a non-canonical encoding"
        );
    }
    let _ = payload.check_static(&SPEC, tx::NOW_SECS * 1000);
}

fn validator_wire(bytes: &[u8]) {
    if let Ok(envelope) = wire::ConsensusEnvelope::decode(bytes) {
        assert_eq!(envelope.encode(), bytes, "envelope does not round-trip");
    }
    if let Ok(request) = wire::SyncRequest::decode(bytes) {
        assert_eq!(request.encode(), bytes, "sync request does not round-trip");
    }
    if let Ok(response) = wire::SyncResponse::decode(bytes) {
        assert_eq!(
            response.encode(),
            bytes,
            "sync response does not round-trip"
        );
        if let wire::SyncResponse::Blocks(blocks) = response {
            for synced in blocks {
                let _ = synced.committed();
            }
        }
    }
}

fn consensus_message(bytes: &[u8]) {
    let Ok(message) = Unverified::<Message>::decode(bytes) else {
        return;
    };
    let message = message.peek();
    assert_eq!(
        message.encode_to_vec(),
        bytes,
        "consensus message does not round-trip"
    );
    let set = crate::consensus::validator_set();
    let _ = Unverified::new(message.clone()).verify(&set, &mut Default::default());
}

//! Test transactions signed for real (secp256k1), for the validator's unit tests.

use alloy_consensus::{SignableTransaction, Signed, TxEnvelope};
use alloy_primitives::Signature;
use kestrel_types::RecoveredTx;

/// `tx` signed by the test key (`[7; 32]`), wrapped by `wrap`, its sender recovered.
pub(crate) fn sign<T: SignableTransaction<Signature>>(
    tx: T,
    wrap: fn(Signed<T>) -> TxEnvelope,
) -> RecoveredTx {
    let secret = secp256k1::SecretKey::from_byte_array(&[7; 32]).unwrap();
    let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
    let (rec, bytes) = secp256k1::SECP256K1
        .sign_ecdsa_recoverable(&msg, &secret)
        .serialize_compact();
    let sig = Signature::from_bytes_and_parity(&bytes, i32::from(rec) != 0);
    RecoveredTx::recover(wrap(tx.into_signed(sig))).unwrap()
}

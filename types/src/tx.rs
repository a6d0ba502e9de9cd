//! Transactions whose sender has been recovered. Only [`RecoveredTx::recover`] makes one, so a value
//! of this type always carries a checked signature (the typestate that keeps unverified input out of
//! the mempool and blocks).

use alloy_consensus::{Transaction, TxEnvelope, transaction::SignerRecoverable};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Bytes};
use std::sync::Arc;

/// Why raw bytes could not become a [`RecoveredTx`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error("rlp: {0}")]
    Decode(String),
    #[error("invalid sender: {0}")]
    Signature(String),
}

/// A signed transaction with its recovered sender, its hash and its EIP-2718 encoding length.
/// Cheap to clone: the body is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredTx(Arc<Inner>);

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    tx: TxEnvelope,
    sender: Address,
    encoded_len: usize,
}

impl RecoveredTx {
    /// Decodes an EIP-2718 transaction (as `eth_sendRawTransaction` and block bodies carry it).
    pub fn decode(mut raw: &[u8]) -> Result<TxEnvelope, TxError> {
        let buf = &mut raw;
        let tx = TxEnvelope::decode_2718(buf).map_err(|e| TxError::Decode(e.to_string()))?;
        if !buf.is_empty() {
            return Err(TxError::Decode("trailing bytes".into()));
        }
        Ok(tx)
    }

    /// Recovers the sender from the signature (secp256k1, ~30 µs).
    pub fn recover(tx: TxEnvelope) -> Result<Self, TxError> {
        let sender = tx
            .recover_signer()
            .map_err(|e| TxError::Signature(e.to_string()))?;
        Ok(Self::new_unchecked(tx, sender))
    }

    /// Builds from a sender recovered earlier (e.g. read back from our own database).
    pub fn new_unchecked(tx: TxEnvelope, sender: Address) -> Self {
        let encoded_len = tx.encode_2718_len();
        Self(Arc::new(Inner {
            tx,
            sender,
            encoded_len,
        }))
    }

    pub fn tx(&self) -> &TxEnvelope {
        &self.0.tx
    }
    pub fn sender(&self) -> Address {
        self.0.sender
    }
    pub fn hash(&self) -> B256 {
        *self.0.tx.tx_hash()
    }
    pub fn nonce(&self) -> u64 {
        self.0.tx.nonce()
    }
    pub fn gas_limit(&self) -> u64 {
        self.0.tx.gas_limit()
    }
    pub fn encoded_len(&self) -> usize {
        self.0.encoded_len
    }
    pub fn encoded(&self) -> Bytes {
        self.0.tx.encoded_2718().into()
    }
}

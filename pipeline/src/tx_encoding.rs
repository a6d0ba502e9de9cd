//! Transaction encodings that no decoder accepts but that the specs name a transaction rule for:
//! a blob or set-code transaction without a recipient (EIP-4844, EIP-7702: their `to` is an
//! address, never empty), and a fee or value above 2^256 − 1. alloy's decoder refuses them as
//! malformed RLP; the specs, and the Ethereum tests' exception classes, blame the transaction.
//! So when a block does not decode, its transactions are walked field by field to find out.

use alloy_consensus::TxType;
use alloy_rlp::Header;

/// Why a transaction's encoding breaks a transaction rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxEncodingError {
    #[error("{0} transaction without a recipient")]
    ContractCreation(TxType),
    #[error("field {0} above 2^256 - 1")]
    ValueOverflow(usize),
}

/// The largest integer field, in bytes.
const WORD_BYTES: usize = 32;

/// The first transaction of the block `rlp` whose encoding breaks a transaction rule, with its
/// index; `None` if the block's structure is broken before its transactions, or none does.
pub fn first_invalid(rlp: &[u8]) -> Option<(usize, TxEncodingError)> {
    let mut block = list_payload(rlp)?;
    let _header = item(&mut block)?;
    let mut txs = list_payload(item(&mut block)?)?;
    let mut index = 0;
    while !txs.is_empty() {
        if let Some(err) = check(item(&mut txs)?) {
            return Some((index, err));
        }
        index += 1;
    }
    None
}

/// One encoded transaction as a block carries it: a list (legacy) or a string holding the type
/// byte and the list.
fn check(tx: &[u8]) -> Option<TxEncodingError> {
    let mut buf = tx;
    let header = Header::decode(&mut buf).ok()?;
    let (tx_type, fields) = if header.list {
        (TxType::Legacy, &buf[..header.payload_length])
    } else {
        let (&byte, typed) = buf[..header.payload_length].split_first()?;
        (TxType::try_from(byte).ok()?, list_payload(typed)?)
    };
    // Positions of the 256-bit fee and value fields, and of `to`, in each type's field list.
    let (words, to): (&[usize], Option<usize>) = match tx_type {
        TxType::Legacy => (&[1, 4], None),
        TxType::Eip2930 => (&[2, 5], None),
        TxType::Eip1559 => (&[2, 3, 6], None),
        TxType::Eip4844 => (&[2, 3, 6, 9], Some(5)),
        TxType::Eip7702 => (&[2, 3, 6], Some(5)),
    };
    let mut fields = fields;
    let mut position = 0;
    while !fields.is_empty() {
        let field = item(&mut fields)?;
        let mut payload = field;
        let header = Header::decode(&mut payload).ok()?;
        if !header.list {
            if words.contains(&position) && header.payload_length > WORD_BYTES {
                return Some(TxEncodingError::ValueOverflow(position));
            }
            if to == Some(position) && header.payload_length == 0 {
                return Some(TxEncodingError::ContractCreation(tx_type));
            }
        }
        position += 1;
    }
    None
}

/// The next item of `buf` (header and payload), advancing past it.
fn item<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut rest = *buf;
    let header = Header::decode(&mut rest).ok()?;
    let len = buf.len() - rest.len() + header.payload_length;
    let item = buf.get(..len)?;
    *buf = &buf[len..];
    Some(item)
}

/// The payload of the list `rlp` starts with.
fn list_payload(rlp: &[u8]) -> Option<&[u8]> {
    let mut buf = rlp;
    let header = Header::decode(&mut buf).ok()?;
    header
        .list
        .then(|| buf.get(..header.payload_length))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, U256};
    use alloy_rlp::Encodable;

    /// An RLP list of `fields`, each already encoded.
    fn list(fields: &[Vec<u8>]) -> Vec<u8> {
        let payload: Vec<u8> = fields.concat();
        let mut out = Vec::new();
        Header {
            list: true,
            payload_length: payload.len(),
        }
        .encode(&mut out);
        out.extend(payload);
        out
    }

    fn rlp(value: impl Encodable) -> Vec<u8> {
        alloy_rlp::encode(value)
    }

    /// A block of an empty header list and `txs`.
    fn block(txs: &[Vec<u8>]) -> Vec<u8> {
        list(&[list(&[]), list(txs)])
    }

    /// A typed transaction as a block carries it: a string of the type byte and the fields.
    fn typed(tx_type: u8, fields: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![tx_type];
        payload.extend(list(fields));
        rlp(alloy_primitives::Bytes::from(payload))
    }

    fn blob_fields(to: Vec<u8>) -> Vec<Vec<u8>> {
        let n = || rlp(1u64);
        vec![
            n(),
            n(),
            n(),
            n(),
            n(),
            to,
            n(),
            rlp(""),
            list(&[]),
            n(),
            list(&[]),
            n(),
            n(),
            n(),
        ]
    }

    #[test]
    fn blob_transaction_without_recipient() {
        let good = typed(3, &blob_fields(rlp(Address::ZERO)));
        let create = typed(3, &blob_fields(rlp("")));
        assert_eq!(first_invalid(&block(std::slice::from_ref(&good))), None);
        assert_eq!(
            first_invalid(&block(&[good, create])),
            Some((1, TxEncodingError::ContractCreation(TxType::Eip4844)))
        );
    }

    #[test]
    fn legacy_value_above_256_bits() {
        let mut too_big = vec![0x01];
        too_big.extend([0u8; 32]);
        let value = rlp(alloy_primitives::Bytes::from(too_big));
        let legacy = |value: Vec<u8>| {
            let n = || rlp(1u64);
            list(&[
                n(),
                n(),
                n(),
                rlp(Address::ZERO),
                value,
                rlp(""),
                n(),
                n(),
                n(),
            ])
        };
        assert_eq!(first_invalid(&block(&[legacy(rlp(U256::MAX))])), None);
        assert_eq!(
            first_invalid(&block(&[legacy(value)])),
            Some((0, TxEncodingError::ValueOverflow(4)))
        );
    }

    #[test]
    fn broken_structure_is_not_blamed_on_a_transaction() {
        assert_eq!(first_invalid(&[0xc5, 0x01]), None);
        assert_eq!(first_invalid(&block(&[vec![0x05]])), None);
    }
}

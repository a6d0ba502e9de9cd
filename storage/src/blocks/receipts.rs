//! How a block's receipts are stored: per receipt `[length u32][type byte unless legacy]`
//! `rlp([status, cumulative gas, [log, ...]])`, the EIP-2718 form without its 256-byte logs bloom.
//! The bloom is a function of the logs, so it is recomputed when a receipt is read, as geth and
//! reth store receipts. An ERC-20 transfer's stored receipt shrinks from 436 to 176 bytes (bloom,
//! its header, a longer list header), so a 5,000-transaction block's archive records (body and
//! receipts) from 3.0 to 1.8 MiB (`kestrel-bench commit`, BENCHMARKS.md).
//!
//! Records written before this layout carry the bloom (the plain EIP-2718 form); both are read.
//! The two differ in the third RLP item: a 256-byte string (the bloom) or a list (the logs).

use crate::{StorageError, codec};
use alloy_consensus::{Eip658Value, Receipt, ReceiptEnvelope, TxType};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::Log;
use alloy_rlp::{Decodable, Encodable, Header};

/// A receipt of a block and what its JSON-RPC form needs from the block's earlier receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedReceipt {
    pub receipt: ReceiptEnvelope,
    /// Cumulative gas of the block's earlier transactions (the receipt's own gas is the
    /// difference).
    pub gas_used_before: u64,
    /// Logs of the block's earlier transactions: log indexes are block-wide.
    pub logs_before: u64,
}

pub(crate) fn encode(receipts: &[ReceiptEnvelope]) -> Vec<u8> {
    let mut out = Vec::new();
    for receipt in receipts {
        let Some(inner) = receipt.as_receipt() else {
            unreachable!("every receipt type alloy knows has a receipt body")
        };
        let payload_length =
            inner.status.length() + inner.cumulative_gas_used.length() + inner.logs.length();
        let header = Header {
            list: true,
            payload_length,
        };
        let typed = receipt.tx_type() != TxType::Legacy;
        let len = usize::from(typed) + header.length() + payload_length;
        out.extend_from_slice(&(len as u32).to_be_bytes());
        if typed {
            out.push(receipt.tx_type() as u8);
        }
        header.encode(&mut out);
        inner.status.encode(&mut out);
        inner.cumulative_gas_used.encode(&mut out);
        inner.logs.encode(&mut out);
    }
    out
}

pub(crate) fn decode(
    table: &'static str,
    bytes: &[u8],
) -> Result<Vec<ReceiptEnvelope>, StorageError> {
    let mut receipts = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (raw, tail) = codec::split_framed(table, rest)?;
        receipts.push(decode_one(raw).map_err(|e| codec::corrupt(table, e.to_string()))?);
        rest = tail;
    }
    Ok(receipts)
}

/// The receipt at `index` of an encoded receipt list, decoding only that one: the earlier ones
/// are only walked for their cumulative gas and log counts (`None` past the end).
pub(crate) fn decode_indexed(
    table: &'static str,
    bytes: &[u8],
    index: usize,
) -> Result<Option<IndexedReceipt>, StorageError> {
    let mut rest = bytes;
    let (mut gas_used_before, mut logs_before) = (0, 0);
    for _ in 0..index {
        if rest.is_empty() {
            return Ok(None);
        }
        let (raw, tail) = codec::split_framed(table, rest)?;
        let (gas, logs) = gas_and_logs(raw).map_err(|e| codec::corrupt(table, e.to_string()))?;
        gas_used_before = gas;
        logs_before += logs;
        rest = tail;
    }
    if rest.is_empty() {
        return Ok(None);
    }
    let (raw, _) = codec::split_framed(table, rest)?;
    let receipt = decode_one(raw).map_err(|e| codec::corrupt(table, e.to_string()))?;
    Ok(Some(IndexedReceipt {
        receipt,
        gas_used_before,
        logs_before,
    }))
}

/// One stored receipt, in either layout, with its bloom.
fn decode_one(raw: &[u8]) -> alloy_rlp::Result<ReceiptEnvelope> {
    let (tx_type, mut fields) = fields(raw)?;
    let status = Eip658Value::decode(&mut fields)?;
    let cumulative_gas_used = u64::decode(&mut fields)?;
    if !next_is_list(fields)? {
        // Written with its bloom.
        let mut buf = raw;
        let receipt = ReceiptEnvelope::decode_2718(&mut buf)
            .map_err(|_| alloy_rlp::Error::Custom("bad EIP-2718 receipt"))?;
        return match buf.is_empty() {
            true => Ok(receipt),
            false => Err(alloy_rlp::Error::Custom("trailing bytes after receipt")),
        };
    }
    let logs = Vec::<Log>::decode(&mut fields)?;
    if !fields.is_empty() {
        return Err(alloy_rlp::Error::ListLengthMismatch {
            expected: 0,
            got: fields.len(),
        });
    }
    let receipt = Receipt {
        status,
        cumulative_gas_used,
        logs,
    };
    Ok(ReceiptEnvelope::from_typed(tx_type, receipt.with_bloom()))
}

/// The cumulative gas and log count of a stored receipt, read off its RLP without building it.
fn gas_and_logs(raw: &[u8]) -> alloy_rlp::Result<(u64, u64)> {
    let (_, mut fields) = fields(raw)?;
    skip(&mut fields)?; // status
    let gas = u64::decode(&mut fields)?;
    if !next_is_list(fields)? {
        skip(&mut fields)?; // bloom
    }
    let mut logs = Header::decode_bytes(&mut fields, true)?;
    let mut count = 0;
    while !logs.is_empty() {
        skip(&mut logs)?;
        count += 1;
    }
    Ok((gas, count))
}

/// The receipt's type (from its leading byte; an RLP list starts at 0xc0) and its RLP list's
/// payload, which must be all of `raw`.
fn fields(raw: &[u8]) -> alloy_rlp::Result<(TxType, &[u8])> {
    let mut buf = raw;
    let tx_type = match buf.first() {
        Some(&ty) if ty < 0x7f => {
            buf = &buf[1..];
            TxType::try_from(ty).map_err(|_| alloy_rlp::Error::Custom("unknown receipt type"))?
        }
        _ => TxType::Legacy,
    };
    let fields = Header::decode_bytes(&mut buf, true)?;
    if !buf.is_empty() {
        return Err(alloy_rlp::Error::Custom("trailing bytes after receipt"));
    }
    Ok((tx_type, fields))
}

fn next_is_list(buf: &[u8]) -> alloy_rlp::Result<bool> {
    Ok(Header::decode(&mut &buf[..])?.list)
}

/// Steps over one RLP item. (`Header::decode` checks that the payload is there, and leaves a
/// single byte, its own payload, in place.)
fn skip(buf: &mut &[u8]) -> alloy_rlp::Result<()> {
    let header = Header::decode(buf)?;
    *buf = &buf[header.payload_length..];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_eips::eip2718::Encodable2718;
    use alloy_primitives::{Address, B256, Bytes, LogData};
    use proptest::prelude::*;

    fn receipt(ty: u8, success: bool, gas: u64, logs: &[(u8, usize, usize)]) -> ReceiptEnvelope {
        let logs = logs
            .iter()
            .map(|&(seed, topics, data)| Log {
                address: Address::repeat_byte(seed),
                data: LogData::new_unchecked(
                    (0..topics)
                        .map(|t| B256::repeat_byte(seed ^ t as u8))
                        .collect(),
                    Bytes::from(vec![seed; data]),
                ),
            })
            .collect();
        let receipt = Receipt {
            status: Eip658Value::Eip658(success),
            cumulative_gas_used: gas,
            logs,
        };
        ReceiptEnvelope::from_typed(TxType::try_from(ty).unwrap(), receipt.with_bloom())
    }

    /// The layout before this one: framed EIP-2718 receipts with their blooms.
    fn encode_with_blooms(receipts: &[ReceiptEnvelope]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in receipts {
            out.extend_from_slice(&(r.encode_2718_len() as u32).to_be_bytes());
            r.encode_2718(&mut out);
        }
        out
    }

    fn block() -> impl Strategy<Value = Vec<ReceiptEnvelope>> {
        let log = (any::<u8>(), 0usize..=4, 0usize..=70);
        let one = (
            0u8..=4,
            any::<bool>(),
            any::<u64>(),
            prop::collection::vec(log, 0..4),
        );
        prop::collection::vec(one, 0..12).prop_map(|receipts| {
            receipts
                .iter()
                .map(|(ty, ok, gas, logs)| receipt(*ty, *ok, *gas, logs))
                .collect()
        })
    }

    proptest! {
        /// Both layouts decode to the same receipts, blooms included, whole or one at a time.
        #[test]
        fn stored_receipts_read_back_with_their_blooms(receipts in block()) {
            for bytes in [encode(&receipts), encode_with_blooms(&receipts)] {
                prop_assert_eq!(&decode("test", &bytes).unwrap(), &receipts);
                let (mut gas_before, mut logs_before) = (0, 0);
                for (i, r) in receipts.iter().enumerate() {
                    let indexed = decode_indexed("test", &bytes, i).unwrap().unwrap();
                    prop_assert_eq!(&indexed.receipt, r);
                    prop_assert_eq!(indexed.gas_used_before, gas_before);
                    prop_assert_eq!(indexed.logs_before, logs_before);
                    gas_before = r.cumulative_gas_used();
                    logs_before += r.logs().len() as u64;
                }
                prop_assert!(decode_indexed("test", &bytes, receipts.len()).unwrap().is_none());
            }
        }
    }

    #[test]
    fn the_bloom_is_not_stored() {
        let receipts = vec![receipt(2, true, 51_000, &[(7, 3, 32)]); 100];
        let stored = encode(&receipts).len();
        let with_blooms = encode_with_blooms(&receipts).len();
        // The bloom, its string header, and a byte of the list header the bloom made longer.
        assert_eq!(with_blooms - stored, 100 * (256 + 3 + 1));
    }

    #[test]
    fn damaged_receipts_are_errors() {
        let mut bytes = encode(&[receipt(2, true, 21_000, &[(1, 1, 1)])]);
        let last = bytes.len() - 1;
        bytes.truncate(last);
        assert!(decode("test", &bytes).is_err(), "truncated");
        let mut bytes = encode(&[receipt(2, true, 21_000, &[])]);
        bytes[4] = 0x7e; // no such receipt type
        assert!(decode("test", &bytes).is_err(), "unknown type");
    }
}

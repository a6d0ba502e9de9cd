//! The bytes of a segment file: a 16-byte header, then records, each a 20-byte header and its
//! payload.
//!
//! ```text
//! segment header: magic "KSTRLARC" (8) | version u32 LE | crc32c of the 12 bytes before (4)
//! record header:  crc32c u32 LE | payload length u32 LE | kind u8 | flags u8 | 0u16 | number u64 LE
//!                 the crc covers the header's last 16 bytes and the payload
//! ```
//!
//! Why CRC-32C and not a keccak prefix (what `blocks.log` used): the check is against torn
//! writes and bit rot, not an adversary (one who can write the datadir needs no collision).
//! CRC-32C detects every burst error up to 32 bits and every odd number of flipped bits, is what
//! ext4, btrfs, iSCSI and RocksDB use for the same job, and is cheaper than keccak (table-driven,
//! slice-by-16: several bytes per cycle, where keccak-f permutes 200 bytes of state for every 136
//! bytes of input); the caller's thread computes it for every block it appends.

use crc::{Crc, Table};

pub const SEGMENT_MAGIC: [u8; 8] = *b"KSTRLARC";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 16;
pub const RECORD_HEADER_BYTES: usize = 20;
/// Largest record payload: a block with a full payload fits many times over. A length above it
/// in a header is garbage (a torn tail), not a record.
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// `flags` bit: the last record of one `append` (one block's records). A block is in the
/// archive once this record is; records after the last such one are a torn group.
pub const FLAG_LAST: u8 = 1;

static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&crc::CRC_32_ISCSI);

/// What a record holds. Stored as a byte, so that new kinds join the same segments without a
/// new segment version: a reader knows every kind before it, and an archive holds the kinds its
/// owner writes (the consensus block log `Block`; the state store `Body` and `Receipts`). A
/// binary older than a kind takes a record of it for a torn tail, so an archive with such
/// records must not be opened by one (a datadir is not downgraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordKind {
    /// A finalized block as the block log keeps it: certificate, block, payload bytes, proof.
    Block = 1,
    /// A committed block's transactions with their senders (the state store's body encoding).
    Body = 2,
    /// A committed block's receipts.
    Receipts = 3,
}

impl RecordKind {
    pub const ALL: [RecordKind; 3] = [RecordKind::Block, RecordKind::Body, RecordKind::Receipts];

    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == byte)
    }

    /// Position in per-kind tables.
    pub fn index(self) -> usize {
        self as usize - 1
    }
}

pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let crc = CRC32C.checksum(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

pub fn segment_header_ok(bytes: &[u8]) -> bool {
    bytes.len() >= SEGMENT_HEADER_BYTES && bytes[..SEGMENT_HEADER_BYTES] == segment_header()
}

/// A record's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub number: u64,
}

impl RecordHeader {
    pub fn parse(bytes: &[u8; RECORD_HEADER_BYTES]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Self {
            crc: u32_at(0),
            len: u32_at(4),
            kind: bytes[8],
            flags: bytes[9],
            number: u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")),
        }
    }

    /// The checks that need no payload: a sane length, a known kind, no unknown flags, zero
    /// padding. A header failing them is garbage.
    pub fn plausible(&self, raw: &[u8; RECORD_HEADER_BYTES]) -> bool {
        self.len as usize <= RECORD_BYTES_MAX
            && RecordKind::from_byte(self.kind).is_some()
            && self.flags & !FLAG_LAST == 0
            && raw[10..12] == [0, 0]
    }

    pub fn last(&self) -> bool {
        self.flags & FLAG_LAST != 0
    }

    /// Whether `payload` is this header's record: the crc over the header's tail and it.
    pub fn matches(&self, raw: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> bool {
        payload.len() == self.len as usize && record_crc(&raw[4..], payload) == self.crc
    }
}

fn record_crc(header_tail: &[u8], payload: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(header_tail);
    digest.update(payload);
    digest.finalize()
}

/// The record's bytes: header then payload.
pub fn encode_record(kind: RecordKind, number: u64, last: bool, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= RECORD_BYTES_MAX,
        "archive record of {} bytes",
        payload.len()
    );
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.push(kind as u8);
    record.push(if last { FLAG_LAST } else { 0 });
    record.extend_from_slice(&[0, 0]);
    record.extend_from_slice(&number.to_le_bytes());
    let crc = record_crc(&record[4..RECORD_HEADER_BYTES], payload);
    record[..4].copy_from_slice(&crc.to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// Segment files are named by the number of their first block, zero-padded so that names sort.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let payload = b"a finalized block".to_vec();
        let record = encode_record(RecordKind::Block, 7, true, &payload);
        let raw: [u8; RECORD_HEADER_BYTES] = record[..RECORD_HEADER_BYTES].try_into().unwrap();
        let header = RecordHeader::parse(&raw);
        assert_eq!((header.len as usize, header.number), (payload.len(), 7));
        assert!(header.plausible(&raw) && header.last());
        assert!(header.matches(&raw, &record[RECORD_HEADER_BYTES..]));
        for bit in 0..record.len() * 8 {
            let mut bad = record.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let raw: [u8; RECORD_HEADER_BYTES] = bad[..RECORD_HEADER_BYTES].try_into().unwrap();
            let header = RecordHeader::parse(&raw);
            let payload = &bad[RECORD_HEADER_BYTES..];
            assert!(
                !(header.plausible(&raw) && header.matches(&raw, payload)),
                "bit {bit} flipped unnoticed"
            );
        }
    }

    #[test]
    fn segment_names_sort_by_first_block() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert!(segment_header_ok(&segment_header()));
    }
}

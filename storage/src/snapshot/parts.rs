//! A chunk cut into parts that each fit one message, and put back together.
//!
//! **Why parts.** A chunk carries whole accounts with all their storage, so one account with
//! more slots than fit a message (an ERC-20 token with a balance slot per holder: about 70
//! bytes a slot, so 4 MiB at about 60,000 holders) would make a chunk that no depth cuts small
//! enough. So a chunk's accounts are cut, in order, into parts of at most a byte budget, and an
//! account's storage may run on from one part into the next.
//!
//! **Encoding.** A part is a list of accounts like a chunk's, with its number, the chunk's count
//! of parts, and one flag: `continues`, set when its first account is the rest of the previous
//! part's last one (the same address and its next slots, in order; nonce 0, balance 0 and no
//! code, which came with the account's first piece). One flag rather than explicit (account,
//! slot range) pieces: a chunk that fits is one part holding exactly its accounts, and putting
//! parts together is appending.
//!
//! **Checking.** A part proves nothing on its own: only the whole chunk is checked against its
//! subtrie hash ([`super::verify::verify_chunk`]), so a syncing node takes all of a chunk's parts
//! from one peer. [`Assembly`] checks the framing only: parts in order, one count of parts, a
//! continuation that continues the account before it, at most [`STATE_PARTS_MAX`] parts.

use super::{ChunkAccount, StateChunk, verify::SnapshotError};
use alloy_primitives::{Address, Bytes, U256};
use alloy_rlp::{Encodable, RlpDecodable, RlpEncodable};

/// Parts of one chunk at most: what a syncing node holds of one chunk until it is checked is
/// bounded by this times the part budget (1 GiB at 4 MiB parts, about 15,000,000 slots of one
/// account), whatever count a lying peer claims.
pub const STATE_PARTS_MAX: u32 = 256;

/// A part's encoding besides its accounts, at most: its list header and accounts list header
/// (5 bytes each below 4 GiB), depth (2), index, part and parts (5 each), the flag (1).
const PART_OVERHEAD_BYTES: usize = 32;
/// An account's encoding may grow this much past its encoding without slots once slots are
/// added: its own list header and its storage list's, 1 byte each when short, 5 at most.
const ACCOUNT_HEADERS_GROWTH_BYTES: usize = 8;
/// One slot's encoding at most: list header (2), slot (33), value (33).
const SLOT_BYTES_MAX: usize = 68;

/// Part `part` of `parts` of chunk `index` of depth `depth`.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct StatePart {
    pub depth: u8,
    pub index: u32,
    pub part: u32,
    /// The chunk's count of parts (1 for a chunk that fits one).
    pub parts: u32,
    /// The first account is the rest of the previous part's last one.
    pub continues: bool,
    /// In hashed-address order.
    pub accounts: Vec<ChunkAccount>,
}

impl StatePart {
    pub fn is_last(&self) -> bool {
        self.part + 1 == self.parts
    }
}

/// Cuts `chunk` into parts each encoding to at most `bytes_max`: accounts fill a part in order;
/// one that does not fit what is left of a part starts the next, and its storage runs on into
/// as many parts as it needs. A function of the chunk and the budget only, so every validator
/// holding a snapshot cuts it alike.
pub fn cut(chunk: StateChunk, bytes_max: usize) -> Result<Vec<StatePart>, SnapshotError> {
    let (depth, index) = (chunk.depth, chunk.index);
    let mut parts: Vec<(bool, Vec<ChunkAccount>)> = vec![(false, Vec::new())];
    let mut used = PART_OVERHEAD_BYTES;
    for mut account in chunk.accounts {
        let slots = std::mem::take(&mut account.storage);
        let base = account.length() + ACCOUNT_HEADERS_GROWTH_BYTES;
        // Room for the account and one slot in an empty part, so every part makes progress.
        if PART_OVERHEAD_BYTES + base + SLOT_BYTES_MAX > bytes_max {
            return Err(SnapshotError::AccountTooLarge {
                index,
                address: account.address,
                bytes_max,
            });
        }
        let whole = base + slots.iter().map(Encodable::length).sum::<usize>();
        let current = &parts.last().expect("one at least").1;
        if used + whole > bytes_max && !current.is_empty() {
            parts.push((false, Vec::new()));
            used = PART_OVERHEAD_BYTES;
        }
        let address = account.address;
        let mut piece = account;
        let mut piece_bytes = base;
        let mut slots = slots.into_iter().peekable();
        loop {
            while let Some(slot) = slots.peek() {
                let bytes = slot.length();
                if used + piece_bytes + bytes > bytes_max {
                    break;
                }
                piece_bytes += bytes;
                piece.storage.push(slots.next().expect("peeked"));
            }
            used += piece_bytes;
            parts.last_mut().expect("one at least").1.push(piece);
            if slots.peek().is_none() {
                break;
            }
            parts.push((true, Vec::new()));
            used = PART_OVERHEAD_BYTES;
            piece = ChunkAccount {
                address,
                nonce: 0,
                balance: U256::ZERO,
                code: Bytes::new(),
                storage: Vec::new(),
            };
            piece_bytes = piece.length() + ACCOUNT_HEADERS_GROWTH_BYTES;
        }
    }
    let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    if count > STATE_PARTS_MAX {
        return Err(SnapshotError::TooManyParts {
            index,
            parts: count,
        });
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(part, (continues, accounts))| StatePart {
            depth,
            index,
            part: part as u32,
            parts: count,
            continues,
            accounts,
        })
        .collect())
}

/// One chunk being put together from its parts, taken in order.
#[derive(Debug)]
pub struct Assembly {
    depth: u8,
    index: u32,
    /// The count of parts, from the first part.
    parts: u32,
    next: u32,
    accounts: Vec<ChunkAccount>,
}

impl Assembly {
    pub fn new(depth: u8, index: u32) -> Self {
        Self {
            depth,
            index,
            parts: 0,
            next: 0,
            accounts: Vec::new(),
        }
    }

    /// The part to take next.
    pub fn next_part(&self) -> u32 {
        self.next
    }

    /// Takes the next part; the whole chunk, not yet checked, once its last part is in.
    pub fn add(&mut self, part: StatePart) -> Result<Option<StateChunk>, SnapshotError> {
        let index = self.index;
        if (part.depth, part.index) != (self.depth, index) {
            return Err(SnapshotError::WrongChunk {
                depth: self.depth,
                want: index,
                got: part.index,
            });
        }
        if part.part != self.next {
            return Err(SnapshotError::PartOrder {
                index,
                want: self.next,
                got: part.part,
            });
        }
        if self.next == 0 && !(1..=STATE_PARTS_MAX).contains(&part.parts) {
            return Err(SnapshotError::TooManyParts {
                index,
                parts: part.parts,
            });
        }
        if self.next > 0 && part.parts != self.parts {
            return Err(SnapshotError::PartCount {
                index,
                want: self.parts,
                got: part.parts,
            });
        }
        self.parts = part.parts;
        let mut accounts = part.accounts.into_iter();
        if part.continues {
            let bad = || SnapshotError::BadContinuation {
                index,
                part: part.part,
            };
            let piece = accounts.next().ok_or_else(bad)?;
            let last = self.accounts.last_mut().ok_or_else(bad)?;
            if !continues(last.address, &piece) {
                return Err(bad());
            }
            last.storage.extend(piece.storage);
        }
        self.accounts.extend(accounts);
        self.next += 1;
        Ok((self.next == self.parts).then(|| StateChunk {
            depth: self.depth,
            index,
            accounts: std::mem::take(&mut self.accounts),
        }))
    }
}

/// Whether `piece` is a well-formed continuation of the account at `address`: the same address,
/// some slots, and nothing else.
fn continues(address: Address, piece: &ChunkAccount) -> bool {
    piece.address == address
        && piece.nonce == 0
        && piece.balance.is_zero()
        && piece.code.is_empty()
        && !piece.storage.is_empty()
}

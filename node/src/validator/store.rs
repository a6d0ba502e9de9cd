//! What a validator keeps on disk besides the database: the safety state consensus must never
//! forget (so a restarted validator never votes twice in a round) with the blocks it voted for
//! that are not final yet (so a network whose validators all restarted still holds the block its
//! high QC certifies), and the log of finalized blocks with their certificates and payloads (to
//! restart consensus from, re-execute after a crash, and serve block sync).

use super::wire::{SyncedBlock, decode_all};
use alloy_primitives::{Bytes, keccak256};
use alloy_rlp::{Encodable, RlpDecodable, RlpEncodable};
use kestrel_consensus::{
    Round,
    bft::{Block, CommittedBlock, QuorumCert, SafetyState},
};
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

const SAFETY_FILE: &str = "safety.rlp";
const LOG_FILE: &str = "blocks.log";
/// Record header: body length (u32 BE), then the first 4 bytes of keccak256(body), which tells a
/// torn or garbage tail from a record.
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record: a block with a full payload fits many times over.
const RECORD_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Blocks voted for kept at most; beyond it the lowest rounds go. Normally two are above the
/// finalized head (the high QC's block and the one just voted for).
pub const VOTED_BLOCKS_MAX: usize = 16;

/// A block this validator voted for (`Command::PersistBlock`) with its payload's bytes (empty
/// if it voted without holding them: a block fetched from a peer in its own round).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct VotedBlock {
    pub block: Block,
    pub payload: Bytes,
}

/// The safety file's content. `voted` came later: a file without it has none.
#[derive(RlpEncodable, RlpDecodable)]
#[rlp(trailing)]
struct SafetyWire {
    highest_voted_round: Round,
    high_qc: QuorumCert,
    voted: Option<Vec<VotedBlock>>,
}

/// The persisted [`SafetyState`] and the blocks voted for above the finalized head, in one file
/// replaced atomically (write, fsync, rename, fsync the directory): the blocks ride on the fsync
/// the vote needs anyway, and a crash mid-write leaves the previous file whole (a torn
/// `safety.rlp.tmp` is never read).
pub struct SafetyFile {
    dir: PathBuf,
    /// Blocks voted for above the finalized head, written with the next state.
    voted: Vec<VotedBlock>,
}

impl SafetyFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            voted: Vec::new(),
        }
    }

    /// The blocks voted for that are kept (loaded, or added since).
    pub fn voted(&self) -> &[VotedBlock] {
        &self.voted
    }

    /// Keeps a block about to be voted for; durable with the next [`SafetyFile::store`].
    pub fn keep(&mut self, block: VotedBlock) {
        if self.voted.iter().any(|v| v.block == block.block) {
            return;
        }
        self.voted.push(block);
        if self.voted.len() > VOTED_BLOCKS_MAX {
            let lowest = (0..self.voted.len())
                .min_by_key(|i| self.voted[*i].block.round)
                .expect("non-empty");
            self.voted.remove(lowest);
        }
    }

    /// Forgets the blocks at or below the finalized `height` (on disk with the next store).
    pub fn prune(&mut self, height: u64) {
        self.voted.retain(|v| v.block.height > height);
    }

    /// The last stored state and blocks voted for, or the genesis state on a fresh validator.
    /// The blocks are kept (see [`SafetyFile::voted`]).
    pub fn load(&mut self) -> Result<(SafetyState, Vec<VotedBlock>), StoreError> {
        let path = self.dir.join(SAFETY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((SafetyState::genesis(), Vec::new()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let wire: SafetyWire = decode_all(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let state = SafetyState {
            highest_voted_round: wire.highest_voted_round,
            high_qc: wire.high_qc,
        };
        self.voted = wire.voted.unwrap_or_default();
        Ok((state, self.voted.clone()))
    }

    /// Durable when it returns: a vote or timeout may leave the node after this. Returns the
    /// bytes written.
    pub fn store(&self, state: &SafetyState) -> Result<usize, StoreError> {
        let wire = SafetyWire {
            highest_voted_round: state.highest_voted_round,
            high_qc: state.high_qc.clone(),
            voted: Some(self.voted.clone()),
        };
        let mut bytes = Vec::with_capacity(wire.length());
        wire.encode(&mut bytes);
        let tmp = self.dir.join(format!("{SAFETY_FILE}.tmp"));
        let path = self.dir.join(SAFETY_FILE);
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(bytes.len())
    }
}

/// Append-only log of finalized blocks, heights 1, 2, 3, ... without gaps.
pub struct ChainLog {
    path: PathBuf,
    file: File,
    /// Offset of each record: `offsets[h - 1]` is height h's.
    offsets: Vec<u64>,
    end: u64,
    head: CommittedBlock,
    dirty: bool,
}

impl ChainLog {
    /// Opens (or creates) the log in `dir`, dropping a torn last record (a crash mid-append; the
    /// block was not handed to execution, since that waits for the fsync).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let (log, torn) = Self::scan(path.clone(), file)?;
        if torn > 0 {
            tracing::warn!(target: "node::validator", path = %path.display(), dropped = torn, "dropping a torn record at the end of the block log");
            log.file.set_len(log.end).map_err(io_err(&path))?;
            log.file.sync_all().map_err(io_err(&path))?;
        }
        Ok(log)
    }

    /// Opens the log to read it only (`kestrel check-datadir`): a torn tail is counted, in
    /// bytes, and left for the node's next start to drop.
    pub fn open_read_only(dir: &Path) -> Result<(Self, u64), StoreError> {
        let path = dir.join(LOG_FILE);
        let file = File::open(&path).map_err(io_err(&path))?;
        Self::scan(path, file)
    }

    /// Reads every whole record; the bytes after the last one are torn.
    fn scan(path: PathBuf, mut file: File) -> Result<(Self, u64), StoreError> {
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut log = Self {
            path: path.clone(),
            file: file.try_clone().map_err(io_err(&path))?,
            offsets: Vec::new(),
            end: 0,
            head: CommittedBlock::genesis(),
            dirty: false,
        };
        file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        let mut reader = io::BufReader::new(&mut file);
        let mut header = [0u8; RECORD_HEADER_BYTES];
        while log.end + RECORD_HEADER_BYTES as u64 <= len {
            reader.read_exact(&mut header).map_err(io_err(&path))?;
            let body_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            if body_len > RECORD_BYTES_MAX
                || log.end + (RECORD_HEADER_BYTES + body_len) as u64 > len
            {
                break;
            }
            let mut body = vec![0u8; body_len];
            reader.read_exact(&mut body).map_err(io_err(&path))?;
            if keccak256(&body)[..4] != header[4..] {
                break;
            }
            let record: SyncedBlock = decode_all(&body).map_err(|e| log.corrupt(e))?;
            let expected = log.offsets.len() as u64 + 1;
            if record.block.height != expected || record.block.parent() != log.head.block.id() {
                return Err(log.corrupt(format!(
                    "record at offset {} is height {}, expected {expected} on the previous block",
                    log.end, record.block.height
                )));
            }
            log.offsets.push(log.end);
            log.end += (RECORD_HEADER_BYTES + body_len) as u64;
            log.head = record.committed();
        }
        let torn = len - log.end;
        Ok((log, torn))
    }

    fn corrupt(&self, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The last finalized block (genesis on a fresh log).
    pub fn head(&self) -> &CommittedBlock {
        &self.head
    }

    pub fn height(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Appends the next block; durable after [`ChainLog::sync`].
    pub fn append(&mut self, block: &SyncedBlock) -> Result<(), StoreError> {
        assert_eq!(
            block.block.height,
            self.height() + 1,
            "log heights are consecutive"
        );
        assert_eq!(
            block.block.parent(),
            self.head.block.id(),
            "log blocks form a chain"
        );
        let mut body = Vec::with_capacity(block.length());
        block.encode(&mut body);
        assert!(
            body.len() <= RECORD_BYTES_MAX,
            "record of {} bytes",
            body.len()
        );
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
        record.extend_from_slice(&(body.len() as u32).to_be_bytes());
        record.extend_from_slice(&keccak256(&body)[..4]);
        record.extend_from_slice(&body);
        self.file.write_all(&record).map_err(io_err(&self.path))?;
        self.offsets.push(self.end);
        self.end += record.len() as u64;
        self.head = block.committed();
        self.dirty = true;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.file.sync_data().map_err(io_err(&self.path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The block at `height` (1 ..= `height()`).
    pub fn read(&self, height: u64) -> Result<SyncedBlock, StoreError> {
        let index = usize::try_from(height - 1).expect("height fits usize");
        let start = self.offsets[index];
        let end = self.offsets.get(index + 1).copied().unwrap_or(self.end);
        let mut record = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut record, start)
            .map_err(io_err(&self.path))?;
        decode_all(&record[RECORD_HEADER_BYTES..]).map_err(|e| self.corrupt(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{B256, Bytes};
    use kestrel_consensus::bft::{Block, BlockId};

    fn chain(n: u64) -> Vec<SyncedBlock> {
        let mut parent = Block::genesis();
        (1..=n)
            .map(|height| {
                let block = Block {
                    round: Round(height),
                    height,
                    timestamp_ms: height * 1000,
                    payload_hash: B256::with_last_byte(height as u8),
                    qc: QuorumCert {
                        round: parent.round,
                        height: parent.height,
                        block_id: parent.id(),
                        signatures: Vec::new(),
                    },
                    ..Block::genesis()
                };
                parent = block.clone();
                SyncedBlock {
                    qc: QuorumCert {
                        round: block.round,
                        height,
                        block_id: block.id(),
                        signatures: Vec::new(),
                    },
                    block,
                    payload: Bytes::from(vec![height as u8; 10]),
                    proof: None,
                }
            })
            .collect()
    }

    #[test]
    fn log_survives_reopen_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = chain(5);
        {
            let mut log = ChainLog::open(dir.path()).unwrap();
            assert_eq!(log.head().block.id(), BlockId::genesis());
            for b in &blocks {
                log.append(b).unwrap();
            }
            log.sync().unwrap();
            assert_eq!(log.read(3).unwrap(), blocks[2]);
        }
        // A crash mid-append leaves part of a record.
        let path = dir.path().join(LOG_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0, 0, 1, 0, 9, 9]).unwrap();
        drop(file);
        let log = ChainLog::open(dir.path()).unwrap();
        assert_eq!(log.height(), 5);
        assert_eq!(log.head(), &blocks[4].committed());
        assert_eq!(log.read(1).unwrap(), blocks[0]);
        assert_eq!(log.read(5).unwrap(), blocks[4]);
    }

    #[test]
    fn safety_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = SafetyFile::new(dir.path());
        assert_eq!(file.load().unwrap(), (SafetyState::genesis(), Vec::new()));
        let state = SafetyState {
            highest_voted_round: Round(42),
            high_qc: chain(1)[0].qc.clone(),
        };
        file.store(&state).unwrap();
        assert_eq!(file.load().unwrap(), (state, Vec::new()));
    }

    fn voted(blocks: &[SyncedBlock]) -> Vec<VotedBlock> {
        blocks
            .iter()
            .map(|b| VotedBlock {
                block: b.block.clone(),
                payload: b.payload.clone(),
            })
            .collect()
    }

    /// The blocks voted for come back with the safety state; a crash in the middle of the next
    /// write (a torn temporary file) leaves the last complete state and its blocks.
    #[test]
    fn voted_blocks_survive_a_restart_and_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = SafetyFile::new(dir.path());
        let blocks = chain(3);
        let state = SafetyState {
            highest_voted_round: Round(3),
            high_qc: blocks[1].qc.clone(),
        };
        for v in voted(&blocks) {
            file.keep(v);
        }
        file.prune(1);
        file.store(&state).unwrap();
        let mut torn = Vec::new();
        SafetyWire {
            highest_voted_round: Round(4),
            high_qc: blocks[2].qc.clone(),
            voted: Some(voted(&blocks)),
        }
        .encode(&mut torn);
        torn.truncate(torn.len() / 2);
        std::fs::write(dir.path().join(format!("{SAFETY_FILE}.tmp")), &torn).unwrap();
        let mut restarted = SafetyFile::new(dir.path());
        let (loaded, kept) = restarted.load().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(kept, voted(&blocks[1..]));
        // The next write replaces the torn file.
        restarted.prune(2);
        restarted.store(&loaded).unwrap();
        assert_eq!(file.load().unwrap(), (state, voted(&blocks[2..])));
    }

    /// Blocks are kept once each and at most `VOTED_BLOCKS_MAX`, the lowest rounds going first.
    #[test]
    fn voted_blocks_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = SafetyFile::new(dir.path());
        let blocks = voted(&chain(VOTED_BLOCKS_MAX as u64 + 4));
        for v in blocks.iter().chain(&blocks[6..8]) {
            file.keep(v.clone());
        }
        assert_eq!(file.voted(), &blocks[4..]);
    }

    /// A safety file written before blocks were kept with it loads with none.
    #[test]
    fn a_safety_file_without_voted_blocks_loads() {
        #[derive(RlpEncodable)]
        struct Old {
            highest_voted_round: Round,
            high_qc: QuorumCert,
        }
        let dir = tempfile::tempdir().unwrap();
        let qc = chain(1)[0].qc.clone();
        let mut bytes = Vec::new();
        Old {
            highest_voted_round: Round(7),
            high_qc: qc.clone(),
        }
        .encode(&mut bytes);
        std::fs::write(dir.path().join(SAFETY_FILE), bytes).unwrap();
        let (state, kept) = SafetyFile::new(dir.path()).load().unwrap();
        assert_eq!(state.highest_voted_round, Round(7));
        assert_eq!(state.high_qc, qc);
        assert!(kept.is_empty());
    }
}

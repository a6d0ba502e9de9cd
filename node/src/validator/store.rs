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
use kestrel_storage::archive::{
    Archive, ArchiveConfig, ArchiveError, IoChoice, IoMode, RECORD_BYTES_MAX, RecordKind,
};
use std::{
    fs::File,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::OnceLock,
};

const SAFETY_FILE: &str = "safety.rlp";
/// The block archive's directory, beside the safety file.
pub(super) const ARCHIVE_DIR: &str = "archive";
/// The block log before the archive: moved into it at the first start.
const LOG_FILE: &str = "blocks.log";
/// `blocks.log` record header: body length (u32 BE), then the first 4 bytes of keccak256(body).
const LEGACY_HEADER_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("block archive: {0}")]
    Archive(#[from] ArchiveError),
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

/// The process's archive settings (`--archive-io`), set once at start-up by
/// [`configure_archive`]; the block log opens with them. A process-wide setting because the
/// log is opened deep inside the driver's construction, which takes no storage options.
static ARCHIVE_CONFIG: OnceLock<ArchiveConfig> = OnceLock::new();

/// Decides the block archive's I/O path for this process: probes io_uring (for `auto` and
/// `io_uring`), logs the choice, and returns it for `kestrel_node_info`. Err when io_uring was
/// required and is unavailable.
pub fn configure_archive(io: IoChoice) -> Result<IoMode, StoreError> {
    let mode = IoMode::resolve(io).map_err(ArchiveError::UringUnavailable)?;
    let io = match mode {
        IoMode::IoUring => IoChoice::IoUring,
        IoMode::Pwrite => IoChoice::Pwrite,
    };
    let _ = ARCHIVE_CONFIG.set(ArchiveConfig {
        io,
        ..ArchiveConfig::default()
    });
    tracing::info!(target: "node::validator", archive_io = mode.label(), "block archive I/O");
    Ok(mode)
}

/// The archive settings of this process, for every archive it opens (the state store's too).
pub fn archive_config() -> ArchiveConfig {
    ARCHIVE_CONFIG.get().copied().unwrap_or_default()
}

/// The log of finalized blocks, heights 1, 2, 3, ... without gaps: one `Block` record per
/// height in the block archive (`consensus/archive/`, kestrel_storage::archive), the block's
/// [`SyncedBlock`] bytes. Appends are handed to the archive's writer stage; [`ChainLog::sync`]
/// waits until they are durable.
pub struct ChainLog {
    archive: Archive,
    head: CommittedBlock,
}

impl ChainLog {
    /// Opens (or creates) the log in `dir`, dropping a torn tail (a crash mid-append; the block
    /// was not handed to execution, since that waits for the fsync), and moves a `blocks.log`
    /// from before the archive into it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, archive_config())
    }

    pub fn open_with(dir: &Path, config: ArchiveConfig) -> Result<Self, StoreError> {
        let (archive, _) = Archive::open(&dir.join(ARCHIVE_DIR), config)?;
        let mut log = Self::from_archive(archive)?;
        log.migrate(&dir.join(LOG_FILE))?;
        Ok(log)
    }

    /// Opens the log to read it only (`kestrel check-datadir`): a torn tail is counted, in
    /// bytes, and left for the node's next start to drop.
    pub fn open_read_only(dir: &Path) -> Result<(Self, u64), StoreError> {
        let legacy = dir.join(LOG_FILE);
        if legacy.exists() {
            return Err(StoreError::Corrupt {
                path: legacy,
                reason: "a block log from before the block archive: start the node once to \
                         move it into the archive"
                    .into(),
            });
        }
        let (archive, report) = Archive::open_read_only(&dir.join(ARCHIVE_DIR), archive_config())?;
        Ok((Self::from_archive(archive)?, report.torn_bytes))
    }

    fn from_archive(archive: Archive) -> Result<Self, StoreError> {
        let mut log = Self {
            archive,
            head: CommittedBlock::genesis(),
        };
        // A log that state sync started holds no block before its base (`ChainLog::start_at`);
        // any other starts at block 1. Either way the archive checked that its blocks are
        // consecutive, and the head is checked below.
        if log.height() > 0 {
            let head = log.read(log.height())?;
            if head.block.height != log.height() {
                return Err(log.corrupt(format!(
                    "the archive's block {} holds height {}",
                    log.height(),
                    head.block.height
                )));
            }
            log.head = head.committed();
        }
        Ok(log)
    }

    /// Appends what a `blocks.log` (the log before the archive) holds beyond the archive, then
    /// removes it once the archive is durable. A crash in between leaves both, and the next
    /// open goes on from where the archive ends.
    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        };
        let had = self.height();
        let mut height = 0;
        for_each_legacy_record(path, file, |body| {
            height += 1;
            let record: SyncedBlock = decode_all(body).map_err(|e| StoreError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            if record.block.height != height {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("record {height} is height {}", record.block.height),
                });
            }
            // Moved before an interrupted move: it must be what the archive holds.
            if height <= had {
                if self.read(height)? != record {
                    return Err(self.corrupt(format!(
                        "block {height} differs between {} and the archive",
                        path.display()
                    )));
                }
            } else {
                self.append(&record)?;
            }
            Ok(())
        })?;
        self.sync()?;
        std::fs::remove_file(path).map_err(io_err(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        tracing::info!(target: "node::validator", from = %path.display(), blocks = height.saturating_sub(had), height = self.height(), "moved the block log into the block archive");
        Ok(())
    }

    fn corrupt(&self, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.archive.dir().to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The last finalized block (genesis on a fresh log).
    pub fn head(&self) -> &CommittedBlock {
        &self.head
    }

    pub fn height(&self) -> u64 {
        self.archive.last_block().unwrap_or(0)
    }

    /// How the archive reaches the disk.
    #[cfg(test)]
    pub fn io_mode(&self) -> IoMode {
        self.archive.io_mode()
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
        self.archive
            .append(block.block.height, &[(RecordKind::Block, &body)])?;
        self.head = block.committed();
        Ok(())
    }

    /// Starts an empty log at `base`, the block whose state a state sync fetched
    /// (`statesync/`), durably: the blocks after it are appended as after any head.
    pub fn start_at(&mut self, base: &SyncedBlock) -> Result<(), StoreError> {
        assert_eq!(self.height(), 0, "only an empty log starts at a base");
        let mut body = Vec::with_capacity(base.length());
        base.encode(&mut body);
        self.archive
            .append(base.block.height, &[(RecordKind::Block, &body)])?;
        self.archive.sync()?;
        self.head = base.committed();
        Ok(())
    }

    /// Waits until every appended block is durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        Ok(self.archive.sync()?)
    }

    /// The block at `height` (1 ..= `height()`).
    pub fn read(&self, height: u64) -> Result<SyncedBlock, StoreError> {
        let bytes = self.archive.read(RecordKind::Block, height)?;
        decode_all(&bytes).map_err(|e| self.corrupt(e))
    }

    /// The blocks `from..=to`, read in one batch.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<SyncedBlock>, StoreError> {
        self.archive
            .read_range(RecordKind::Block, from, to)?
            .iter()
            .map(|bytes| decode_all(bytes).map_err(|e| self.corrupt(e)))
            .collect()
    }
}

/// Calls `f` with each whole record of a `blocks.log` (length u32 BE, the first 4 bytes of
/// keccak256(body), body), up to a torn tail.
fn for_each_legacy_record(
    path: &Path,
    file: File,
    mut f: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = io::BufReader::new(file);
    let mut header = [0u8; LEGACY_HEADER_BYTES];
    let mut pos = 0u64;
    let mut body = Vec::new();
    while pos + LEGACY_HEADER_BYTES as u64 <= len {
        reader.read_exact(&mut header).map_err(io_err(path))?;
        let body_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if body_len > RECORD_BYTES_MAX || pos + (LEGACY_HEADER_BYTES + body_len) as u64 > len {
            break;
        }
        body.resize(body_len, 0);
        reader.read_exact(&mut body).map_err(io_err(path))?;
        if keccak256(&body)[..4] != header[4..] {
            break;
        }
        f(&body)?;
        pos += (LEGACY_HEADER_BYTES + body_len) as u64;
    }
    Ok(())
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

    /// The archive's one segment file (the tests' logs are far below a segment's size).
    fn segment(dir: &Path) -> PathBuf {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join(ARCHIVE_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(segments.len(), 1, "{segments:?}");
        segments.pop().unwrap()
    }

    #[test]
    fn log_survives_reopen_and_drops_a_torn_tail() {
        for io in [IoChoice::Auto, IoChoice::Pwrite] {
            let config = ArchiveConfig {
                io,
                ..ArchiveConfig::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let blocks = chain(5);
            {
                let mut log = ChainLog::open_with(dir.path(), config).unwrap();
                assert_eq!(log.head().block.id(), BlockId::genesis());
                for b in &blocks {
                    log.append(b).unwrap();
                }
                log.sync().unwrap();
                assert_eq!(log.read(3).unwrap(), blocks[2]);
                assert_eq!(log.read_range(2, 4).unwrap(), blocks[1..4]);
            }
            // A crash mid-append leaves part of a record.
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(segment(dir.path()))
                .unwrap();
            file.write_all(&[0, 0, 1, 0, 9, 9]).unwrap();
            drop(file);
            let (log, torn) = ChainLog::open_read_only(dir.path()).unwrap();
            assert_eq!((log.height(), torn), (5, 6));
            drop(log);
            let log = ChainLog::open_with(dir.path(), config).unwrap();
            assert_eq!(log.height(), 5);
            assert_eq!(log.io_mode() == IoMode::Pwrite, io == IoChoice::Pwrite);
            assert_eq!(log.head(), &blocks[4].committed());
            assert_eq!(log.read(1).unwrap(), blocks[0]);
            assert_eq!(log.read(5).unwrap(), blocks[4]);
            assert_eq!(ChainLog::open_read_only(dir.path()).unwrap().1, 0);
        }
    }

    /// `blocks.log` as the node wrote it before the archive.
    fn write_legacy_log(dir: &Path, blocks: &[SyncedBlock], torn_tail: &[u8]) {
        let mut bytes = Vec::new();
        for block in blocks {
            let mut body = Vec::new();
            block.encode(&mut body);
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&keccak256(&body)[..4]);
            bytes.extend_from_slice(&body);
        }
        bytes.extend_from_slice(torn_tail);
        std::fs::write(dir.join(LOG_FILE), bytes).unwrap();
    }

    /// A datadir from before the archive: its `blocks.log` moves into the archive at the first
    /// open (check-datadir refuses it until then), and is gone after.
    #[test]
    fn an_old_block_log_moves_into_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = chain(7);
        write_legacy_log(dir.path(), &blocks[..6], &[0, 0, 0, 9, 1]);
        assert!(matches!(
            ChainLog::open_read_only(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
        {
            let mut log = ChainLog::open(dir.path()).unwrap();
            assert!(!dir.path().join(LOG_FILE).exists());
            assert_eq!(log.height(), 6);
            assert_eq!(log.head(), &blocks[5].committed());
            log.append(&blocks[6]).unwrap();
            log.sync().unwrap();
        }
        let (log, torn) = ChainLog::open_read_only(dir.path()).unwrap();
        assert_eq!((log.height(), torn), (7, 0));
        assert_eq!(log.read_range(1, 7).unwrap(), blocks);
    }

    /// A crash during the move leaves the archive with the first blocks and the old log whole:
    /// the next open goes on from the archive's end; an old log that disagrees with the
    /// archive is refused.
    #[test]
    fn an_interrupted_move_resumes_and_a_different_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = chain(6);
        {
            let mut log = ChainLog::open(dir.path()).unwrap();
            for b in &blocks[..3] {
                log.append(b).unwrap();
            }
            log.sync().unwrap();
        }
        write_legacy_log(dir.path(), &blocks, &[]);
        let log = ChainLog::open(dir.path()).unwrap();
        assert_eq!(log.read_range(1, 6).unwrap(), blocks);
        drop(log);
        let mut other = chain(3);
        other[2].payload = Bytes::from_static(b"another payload");
        write_legacy_log(dir.path(), &other, &[]);
        assert!(matches!(
            ChainLog::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
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

/// One segment file of a datadir's block archive, as `kestrel db stats` lists it.
#[derive(Debug, serde::Serialize)]
pub struct ArchiveSegment {
    pub file: String,
    pub first_block: u64,
    pub blocks: u64,
    pub bytes: u64,
}

/// The segments of `datadir`'s block archives, the consensus block log's and the state store's
/// (bodies and receipts), read without changing anything. `file` is relative to the datadir.
pub fn archive_stats(datadir: &Path) -> Result<Vec<ArchiveSegment>, StoreError> {
    let dirs = [
        Path::new(super::CONSENSUS_DIR).join(ARCHIVE_DIR),
        PathBuf::from(kestrel_storage::ARCHIVE_DIR),
    ];
    let mut stats = Vec::new();
    for dir in dirs {
        let (archive, _) = Archive::open_read_only(&datadir.join(&dir), archive_config())?;
        let segments = archive.segments();
        let end = archive.last_block().map_or(0, |last| last + 1);
        stats.extend(segments.iter().enumerate().map(|(i, s)| {
            let next = segments.get(i + 1).map_or(end, |n| n.first);
            let name = s.path.file_name().unwrap_or_default();
            ArchiveSegment {
                file: dir.join(name).display().to_string(),
                first_block: s.first,
                blocks: next.saturating_sub(s.first),
                bytes: s.bytes,
            }
        }));
    }
    Ok(stats)
}

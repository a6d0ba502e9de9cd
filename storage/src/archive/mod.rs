//! The block archive: finalized blocks (and later their receipts and state change sets) in
//! append-only segment files, written by an io_uring stage of their own.
//!
//! ```text
//!  append(n, records) ──Write──▶ writer stage (archive-writer thread)
//!   (caller: encodes,             groups what queued up, writev + fdatasync through io_uring
//!    checksums, indexes)          (or pwrite + fdatasync), publishes "durable up to n"
//!        ▲                                     │
//!        └──── wait_durable(n) / sync() ◀──────┘
//! ```
//!
//! On disk, in the archive directory: `<first block, 20 digits>.seg` files (format.rs). A new
//! segment starts at a block boundary once the current one passed `segment_bytes`, and only
//! after everything before it is durable, so a crash can leave a torn tail in the last segment
//! only. At open the last segment is checked record by record (checksums) and a torn tail, a
//! record that is partly written, garbage, or a block whose records are not all there, is
//! truncated (`kestrel_archive_torn_tail_repairs_total`). Earlier segments were durable when
//! the next one was created: their record headers are checked (lengths, kinds, consecutive
//! block numbers, the first block matching the name, the file ending on a block's last record);
//! a mismatch there is corruption, an error, not a tail to cut. Every read checks its record's
//! checksum.
//!
//! The index (block number to segment and offset) is in memory, rebuilt at open from the
//! record headers.

mod format;
mod io;
mod metrics;
mod repair;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{RECORD_BYTES_MAX, RECORD_HEADER_BYTES, RecordKind};
pub use io::{IoChoice, IoMode};
pub use metrics::describe_metrics;
pub use writer::{GROUP_BYTES_MAX, GROUP_WRITES_MAX, QUEUE_WRITES_MAX};

use format::{RecordHeader, SEGMENT_HEADER_BYTES};
use io::{Disk, ReadOp};
use parking_lot::Mutex;
use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read},
    path::{Path, PathBuf},
    sync::Arc,
};
use writer::{Durable, Write, Writer};

/// The metrics label of the consensus block log's archive, the first one Kestrel had.
pub const LABEL_DEFAULT: &str = "consensus";
/// Segment size after which the next block starts a new segment.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 << 20;
/// Records one `read_range` returns at most (callers bound their ranges below it: block sync
/// asks for at most `SYNC_BLOCKS_MAX`).
pub const READ_RANGE_RECORDS_MAX: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the archive writer stopped: {reason}")]
    WriterFailed { reason: String },
    #[error("io_uring was asked for (--archive-io io_uring) but is unavailable: {0}")]
    UringUnavailable(std::io::Error),
    #[error("the archive holds no {kind:?} record for block {number}")]
    Missing { kind: RecordKind, number: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ArchiveConfig {
    pub io: IoChoice,
    pub segment_bytes: u64,
    /// The `archive` label of its metrics: a process holds several archives (the consensus
    /// block log's, the state store's bodies and receipts).
    pub label: &'static str,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            io: IoChoice::Auto,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            label: LABEL_DEFAULT,
        }
    }
}

/// What open found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes of a torn tail: truncated by [`Archive::open`], left by [`Archive::open_read_only`].
    pub torn_bytes: u64,
}

/// A last segment's torn tail: its bytes, and whether no whole block precedes it (then the file
/// goes).
#[derive(Debug, Clone, Copy)]
struct Torn {
    bytes: u64,
    whole_segment: bool,
}

/// A segment file as the archive sees it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub first: u64,
    pub path: PathBuf,
    /// Bytes, including records appended and not yet durable.
    pub bytes: u64,
}

struct Segment {
    info: SegmentInfo,
    /// Open for the last segment (appended to) only: a long archive has thousands of
    /// segments, more than a process may hold open; the others are opened per read.
    file: Option<Arc<File>>,
}

impl Segment {
    fn file(&self) -> Result<Arc<File>, ArchiveError> {
        match &self.file {
            Some(file) => Ok(file.clone()),
            None => File::open(&self.info.path)
                .map(Arc::new)
                .map_err(io_err(&self.info.path)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u32,
    offset: u64,
    len: u32,
}

/// One kind's records: block `first + i` at `locs[i]`.
#[derive(Default)]
struct KindIndex {
    first: u64,
    locs: Vec<Loc>,
}

impl KindIndex {
    fn next(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64)
    }

    fn get(&self, number: u64) -> Option<Loc> {
        let i = usize::try_from(number.checked_sub(self.first)?).ok()?;
        self.locs.get(i).copied()
    }

    fn push(&mut self, number: u64, loc: Loc) {
        match self.next() {
            None => self.first = number,
            Some(next) => assert_eq!(number, next, "a kind's block numbers are consecutive"),
        }
        self.locs.push(loc);
    }
}

pub struct Archive {
    dir: PathBuf,
    mode: IoMode,
    segment_bytes: u64,
    label: &'static str,
    segments: Vec<Segment>,
    kinds: Vec<KindIndex>,
    /// Highest block appended (durable or not).
    last_block: Option<u64>,
    /// `None` when opened read-only.
    writer: Option<Writer>,
    durable: Arc<Durable>,
    reader: Mutex<Disk>,
}

impl Archive {
    /// Opens (or creates) the archive in `dir`, truncating a torn tail, and starts its writer.
    pub fn open(dir: &Path, config: ArchiveConfig) -> Result<(Self, OpenReport), ArchiveError> {
        metrics::register(config.label);
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|p| p.sync_all())
                    .map_err(io_err(parent))?;
            }
        }
        let (mut archive, report) = Self::scan(dir, config, false)?;
        // What a crashed process left in the page cache is on disk once this returns.
        if let Some(last) = archive.segments.last() {
            last.file()?.sync_data().map_err(io_err(&last.info.path))?;
        }
        archive.writer = Some(Writer::spawn(
            archive.mode,
            dir.to_owned(),
            archive.durable.clone(),
            config.label,
        )?);
        ::metrics::gauge!(metrics::SEGMENTS, metrics::LABEL => config.label)
            .set(archive.segments.len() as f64);
        if let Some(last) = archive.last_block {
            ::metrics::gauge!(metrics::DURABLE_BLOCK, metrics::LABEL => config.label)
                .set(last as f64);
        }
        tracing::info!(target: "storage::archive", dir = %dir.display(), io = archive.mode.label(), segments = archive.segments.len(), last_block = ?archive.last_block, "block archive open");
        Ok((archive, report))
    }

    /// Opens the archive to read only (`kestrel check-datadir`): a torn tail is reported, not
    /// cut, and nothing is written. A missing directory is an empty archive.
    pub fn open_read_only(
        dir: &Path,
        config: ArchiveConfig,
    ) -> Result<(Self, OpenReport), ArchiveError> {
        Self::scan(dir, config, true)
    }

    fn scan(
        dir: &Path,
        config: ArchiveConfig,
        read_only: bool,
    ) -> Result<(Self, OpenReport), ArchiveError> {
        let mode = IoMode::resolve(config.io).map_err(ArchiveError::UringUnavailable)?;
        let reader = Mutex::new(Disk::new(mode).map_err(ArchiveError::UringUnavailable)?);
        let mut archive = Self {
            dir: dir.to_owned(),
            mode,
            segment_bytes: config.segment_bytes,
            label: config.label,
            segments: Vec::new(),
            kinds: RecordKind::ALL
                .iter()
                .map(|_| KindIndex::default())
                .collect(),
            last_block: None,
            writer: None,
            durable: Arc::new(Durable::default()),
            reader,
        };
        let mut names = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err(dir))?;
                    if let Some(first) = entry
                        .file_name()
                        .to_str()
                        .and_then(format::parse_segment_name)
                    {
                        names.push((first, entry.path()));
                    }
                }
            }
            Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
        names.sort();
        let mut report = OpenReport::default();
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&path)
                .map_err(io_err(&path))?;
            if let Some(torn) = archive.scan_segment(first, path, file, last)? {
                report.torn_bytes = torn.bytes;
                if !read_only {
                    archive.repair(torn)?;
                }
            }
            if !last {
                archive.segments.last_mut().expect("just scanned").file = None;
            }
        }
        archive.durable = Arc::new(Durable::starting_at(archive.last_block));
        Ok((archive, report))
    }

    /// Indexes one segment's records. Returns its torn tail, if any (only the last segment may
    /// have one; elsewhere it is corruption). A last segment without one whole block is all
    /// torn.
    fn scan_segment(
        &mut self,
        first: u64,
        path: PathBuf,
        file: File,
        last: bool,
    ) -> Result<Option<Torn>, ArchiveError> {
        let len = file.metadata().map_err(io_err(&path))?.len();
        let corrupt = |offset: u64, reason: String| ArchiveError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let header_ok = len >= SEGMENT_HEADER_BYTES as u64
            && reader.read_exact(&mut header).is_ok()
            && format::segment_header_ok(&header);
        let segment = self.segments.len() as u32;
        // Records of the block being read, indexed once its last record is seen.
        let mut pending: Vec<(RecordKind, u64, Loc)> = Vec::new();
        let mut pos = SEGMENT_HEADER_BYTES as u64;
        let mut end = pos;
        let mut blocks = 0u64;
        let mut why_not = String::from("a torn segment header");
        if header_ok {
            let mut raw = [0u8; RECORD_HEADER_BYTES];
            let mut payload = Vec::new();
            why_not = loop {
                if pos == len {
                    break String::new();
                }
                if pos + RECORD_HEADER_BYTES as u64 > len {
                    break format!("{} bytes, less than a record header", len - pos);
                }
                reader.read_exact(&mut raw).map_err(io_err(&path))?;
                let h = RecordHeader::parse(&raw);
                if !h.plausible(&raw) {
                    break "an implausible record header".into();
                }
                let record_end = pos + (RECORD_HEADER_BYTES as u64) + u64::from(h.len);
                if record_end > len {
                    break format!("a record of {} bytes past the end of the file", h.len);
                }
                if last {
                    payload.resize(h.len as usize, 0);
                    reader.read_exact(&mut payload).map_err(io_err(&path))?;
                    if !h.matches(&raw, &payload) {
                        break "a record whose checksum fails".into();
                    }
                } else {
                    reader
                        .seek_relative(i64::from(h.len))
                        .map_err(io_err(&path))?;
                }
                let kind = RecordKind::from_byte(h.kind).expect("plausible");
                // The records of one block share its number; the next block's is one more; the
                // segment's first block is its name.
                let expected = match (pending.first(), self.last_block) {
                    (Some((_, number, _)), _) => *number,
                    (None, Some(prev)) => prev + 1,
                    (None, None) => first,
                };
                let opens_segment = blocks == 0 && pending.is_empty();
                if h.number != expected || (opens_segment && h.number != first) {
                    break format!(
                        "a record of block {} where block {expected} was due",
                        h.number
                    );
                }
                if self.kinds[kind.index()]
                    .next()
                    .is_some_and(|next| next != h.number)
                    || pending.iter().any(|(k, _, _)| *k == kind)
                {
                    break format!("a second {kind:?} record for block {}", h.number);
                }
                pending.push((
                    kind,
                    h.number,
                    Loc {
                        segment,
                        offset: pos,
                        len: h.len,
                    },
                ));
                pos = record_end;
                if h.last() {
                    for (kind, number, loc) in pending.drain(..) {
                        self.kinds[kind.index()].push(number, loc);
                    }
                    self.last_block = Some(h.number);
                    blocks += 1;
                    end = pos;
                }
            };
        }
        if end < len || blocks == 0 {
            if !last {
                return Err(corrupt(
                    end,
                    format!("a segment that is not the last ends in {why_not}"),
                ));
            }
            tracing::debug!(target: "storage::archive", path = %path.display(), offset = end, reason = %why_not, "torn tail");
        }
        let torn = (end < len || blocks == 0).then_some(Torn {
            bytes: if blocks == 0 { len } else { len - end },
            whole_segment: blocks == 0,
        });
        self.segments.push(Segment {
            info: SegmentInfo {
                first,
                path,
                bytes: if blocks == 0 { len } else { end },
            },
            file: Some(Arc::new(file)),
        });
        Ok(torn)
    }

    pub fn io_mode(&self) -> IoMode {
        self.mode
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Highest block appended (durable or not).
    pub fn last_block(&self) -> Option<u64> {
        self.last_block
    }

    /// Highest block durable.
    pub fn durable_block(&self) -> Option<u64> {
        self.durable.get()
    }

    /// Groups the writer stage made durable since open (each one fsync per file it touched).
    pub fn groups_synced(&self) -> u64 {
        self.durable.groups()
    }

    /// The lowest block holding a record of `kind`.
    pub fn first(&self, kind: RecordKind) -> Option<u64> {
        let index = &self.kinds[kind.index()];
        (!index.locs.is_empty()).then_some(index.first)
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.iter().map(|s| s.info.clone()).collect()
    }

    /// Appends block `number`'s records (each kind at most once), after block `number - 1`.
    /// Returns once they are queued for the writer stage (which may block while its queue is
    /// full); durable after [`Archive::wait_durable`]`(number)`.
    pub fn append(
        &mut self,
        number: u64,
        records: &[(RecordKind, &[u8])],
    ) -> Result<(), ArchiveError> {
        assert!(!records.is_empty(), "a block's records");
        if let Some(last) = self.last_block {
            assert_eq!(number, last + 1, "archive blocks are consecutive");
        }
        let roll = self
            .segments
            .last()
            .is_none_or(|s| s.info.bytes >= self.segment_bytes);
        if roll {
            self.start_segment(number)?;
        }
        let segment = self.segments.len() - 1;
        for (i, (kind, payload)) in records.iter().enumerate() {
            assert!(
                records[..i].iter().all(|(k, _)| k != kind),
                "one {kind:?} record per block"
            );
            let last = i + 1 == records.len();
            let bytes = format::encode_record(*kind, number, last, payload);
            let seg = &mut self.segments[segment];
            let offset = seg.info.bytes;
            seg.info.bytes += bytes.len() as u64;
            let file = seg.file.clone().expect("the last segment is open");
            self.kinds[kind.index()].push(
                number,
                Loc {
                    segment: segment as u32,
                    offset,
                    len: payload.len() as u32,
                },
            );
            ::metrics::counter!(metrics::APPENDS, metrics::LABEL => self.label).increment(1);
            ::metrics::counter!(metrics::APPEND_BYTES, metrics::LABEL => self.label)
                .increment(bytes.len() as u64);
            self.send(Write {
                file,
                offset,
                bytes,
                created: false,
                completes: last.then_some(number),
            })?;
        }
        self.last_block = Some(number);
        Ok(())
    }

    /// A new segment named `first`, once everything before it is durable (so that only the
    /// last segment can ever hold a torn tail).
    fn start_segment(&mut self, first: u64) -> Result<(), ArchiveError> {
        self.sync()?;
        let path = self.dir.join(format::segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let file = Arc::new(file);
        if let Some(previous) = self.segments.last_mut() {
            previous.file = None;
        }
        self.segments.push(Segment {
            info: SegmentInfo {
                first,
                path,
                bytes: SEGMENT_HEADER_BYTES as u64,
            },
            file: Some(file.clone()),
        });
        ::metrics::gauge!(metrics::SEGMENTS, metrics::LABEL => self.label)
            .set(self.segments.len() as f64);
        self.send(Write {
            file,
            offset: 0,
            bytes: format::segment_header().to_vec(),
            created: true,
            completes: None,
        })
    }

    fn send(&self, write: Write) -> Result<(), ArchiveError> {
        let writer = self
            .writer
            .as_ref()
            .expect("append to an archive opened read-only");
        writer.send(write).map_err(|()| {
            // The stage only stops on a failure it has published.
            match self.durable.wait(u64::MAX) {
                Err(err) => err,
                Ok(()) => unreachable!("nothing is durable up to u64::MAX"),
            }
        })
    }

    /// Blocks until block `number` is durable.
    pub fn wait_durable(&self, number: u64) -> Result<(), ArchiveError> {
        self.durable.wait(number)
    }

    /// Blocks until every block appended is durable.
    pub fn sync(&self) -> Result<(), ArchiveError> {
        match self.last_block {
            Some(last) if self.writer.is_some() => self.durable.wait(last),
            _ => Ok(()),
        }
    }

    fn loc(&self, kind: RecordKind, number: u64) -> Result<Loc, ArchiveError> {
        self.kinds[kind.index()]
            .get(number)
            .ok_or(ArchiveError::Missing { kind, number })
    }

    /// Block `number`'s record of `kind`, checked against its checksum.
    pub fn read(&self, kind: RecordKind, number: u64) -> Result<Vec<u8>, ArchiveError> {
        Ok(self
            .read_range(kind, number, number)?
            .pop()
            .expect("one record"))
    }

    /// The records of `kind` for blocks `from..=to`, read in one batch (one submission per
    /// `RING_ENTRIES` records on io_uring).
    pub fn read_range(
        &self,
        kind: RecordKind,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<u8>>, ArchiveError> {
        assert!(
            from <= to && to - from < READ_RANGE_RECORDS_MAX,
            "read_range({from}, {to})"
        );
        let locs = (from..=to)
            .map(|n| self.loc(kind, n))
            .collect::<Result<Vec<_>, _>>()?;
        // Appended records are read once the stage wrote them.
        if self.writer.is_some() {
            self.durable.wait(to)?;
        }
        let mut bufs: Vec<Vec<u8>> = locs
            .iter()
            .map(|l| vec![0u8; RECORD_HEADER_BYTES + l.len as usize])
            .collect();
        // Each segment the range touches, opened once.
        let mut files: Vec<(u32, Arc<File>)> = Vec::new();
        for l in &locs {
            if files.last().is_none_or(|(s, _)| *s != l.segment) {
                files.push((l.segment, self.segments[l.segment as usize].file()?));
            }
        }
        let file_of = |segment: u32| {
            &files
                .iter()
                .find(|(s, _)| *s == segment)
                .expect("opened above")
                .1
        };
        let mut ops: Vec<ReadOp<'_>> = locs
            .iter()
            .zip(bufs.iter_mut())
            .map(|(l, buf)| ReadOp {
                file: file_of(l.segment),
                offset: l.offset,
                buf,
            })
            .collect();
        self.reader.lock().read(&mut ops).map_err(|source| {
            let path = &self.segments[locs[0].segment as usize].info.path;
            io_err(path)(source)
        })?;
        drop(ops);
        let mut bytes = 0;
        for ((number, loc), buf) in (from..=to).zip(&locs).zip(bufs.iter_mut()) {
            let raw: [u8; RECORD_HEADER_BYTES] =
                buf[..RECORD_HEADER_BYTES].try_into().expect("header bytes");
            let h = RecordHeader::parse(&raw);
            let ok = h.plausible(&raw)
                && h.kind == kind as u8
                && h.number == number
                && h.matches(&raw, &buf[RECORD_HEADER_BYTES..]);
            if !ok {
                return Err(ArchiveError::Corrupt {
                    path: self.segments[loc.segment as usize].info.path.clone(),
                    offset: loc.offset,
                    reason: format!("the {kind:?} record of block {number} fails its checksum"),
                });
            }
            buf.drain(..RECORD_HEADER_BYTES);
            bytes += buf.len();
        }
        ::metrics::counter!(metrics::READS, metrics::LABEL => self.label)
            .increment(bufs.len() as u64);
        ::metrics::counter!(metrics::READ_BYTES, metrics::LABEL => self.label)
            .increment(bytes as u64);
        Ok(bufs)
    }
}

impl Drop for Archive {
    /// The writer stage writes and syncs what is queued before it exits.
    fn drop(&mut self) {
        self.writer.take();
    }
}

//! The block archive's write path, io_uring against the pwrite fallback (`kestrel-bench
//! archive`): appends per second and fsyncs per second at a block record's size, in two
//! patterns. `sync_each` waits for each block to be durable before appending the next (what a
//! validator does when blocks come one at a time: one fsync per block); `grouped` appends
//! without waiting and syncs at the end (blocks arriving faster than the disk syncs, e.g. a
//! restart's re-execution or a migration: the writer stage groups them). Every run reads its
//! blocks back in batches and compares them with what it wrote.

use kestrel_storage::archive::{
    Archive, ArchiveConfig, IoChoice, IoMode, READ_RANGE_RECORDS_MAX, RecordKind,
};
use serde_json::{Value, json};
use std::{path::Path, time::Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    SyncEach,
    Grouped,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::SyncEach => "sync_each",
            Pattern::Grouped => "grouped",
        }
    }

    /// Blocks per run: enough for a steady rate, bounded in bytes so that 600 KB blocks stay
    /// within a few hundred MB of disk and a few seconds.
    pub fn blocks(self, record_bytes: usize) -> u64 {
        let (count, budget) = match self {
            Pattern::SyncEach => (2_000u64, 64u64 << 20),
            Pattern::Grouped => (20_000, 128 << 20),
        };
        count.min(budget / record_bytes.max(1) as u64).max(10)
    }
}

/// Block `n`'s record: `bytes` deterministic bytes.
pub fn record(n: u64, bytes: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One run in a fresh archive under `dir`; `None` when io_uring was asked for and is not there.
pub fn run(
    dir: &Path,
    io: IoChoice,
    pattern: Pattern,
    record_bytes: usize,
    blocks: u64,
) -> eyre::Result<Option<Value>> {
    let dir = tempfile::tempdir_in(dir)?;
    let config = ArchiveConfig {
        io,
        ..ArchiveConfig::default()
    };
    let mut archive = match Archive::open(dir.path(), config) {
        Ok((archive, _)) => archive,
        Err(kestrel_storage::archive::ArchiveError::UringUnavailable(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let records: Vec<Vec<u8>> = (1..=blocks).map(|n| record(n, record_bytes)).collect();
    let started = Instant::now();
    for (n, bytes) in (1..=blocks).zip(&records) {
        archive.append(n, &[(RecordKind::Block, bytes)])?;
        if pattern == Pattern::SyncEach {
            archive.wait_durable(n)?;
        }
    }
    archive.sync()?;
    let write_s = started.elapsed().as_secs_f64();
    let fsyncs = archive.groups_synced();
    let started = Instant::now();
    let mut verified = true;
    let mut from = 1;
    while from <= blocks {
        let to = (from + READ_RANGE_RECORDS_MAX.min(256) - 1).min(blocks);
        let read = archive.read_range(RecordKind::Block, from, to)?;
        verified &= read
            .iter()
            .zip(&records[from as usize - 1..])
            .all(|(a, b)| a == b);
        from = to + 1;
    }
    let read_s = started.elapsed().as_secs_f64();
    eyre::ensure!(
        verified,
        "the archive read back other bytes than were appended"
    );
    let mode = archive.io_mode();
    Ok(Some(json!({
        "bench": "archive",
        "io": mode.label(),
        "pattern": pattern.name(),
        "record_bytes": record_bytes,
        "blocks": blocks,
        "write_s": round3(write_s),
        "appends_per_s": (blocks as f64 / write_s).round(),
        "fsyncs": fsyncs,
        "fsyncs_per_s": (fsyncs as f64 / write_s).round(),
        "blocks_per_fsync": round3(blocks as f64 / fsyncs.max(1) as f64),
        "write_mb_per_s": round3(blocks as f64 * record_bytes as f64 / write_s / 1e6),
        "reads_per_s": (blocks as f64 / read_s).round(),
        "verified": verified,
    })))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Whether `run` with io_uring measures io_uring (for the report).
pub fn uring_available() -> bool {
    IoMode::resolve(IoChoice::IoUring).is_ok()
}

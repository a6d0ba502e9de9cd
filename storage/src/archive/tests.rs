//! The archive against a model (the payloads appended), through both I/O paths, across
//! reopens and simulated crashes: a crash leaves the last segment cut or overwritten at any
//! byte, and the reopened archive must hold every block before the damage, intact, and none
//! from the damaged record on.

use super::*;
use proptest::prelude::*;
use std::{fs::OpenOptions, io::Write as _, os::unix::fs::FileExt};

const KIND: RecordKind = RecordKind::Block;

fn config(io: IoChoice, segment_bytes: u64) -> ArchiveConfig {
    ArchiveConfig {
        io,
        segment_bytes,
        ..ArchiveConfig::default()
    }
}

/// Block `n`'s payload: its size and content follow from `n` and `seed`.
fn payload(seed: u64, n: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (n.wrapping_mul(31) ^ seed ^ i as u64) as u8)
        .collect()
}

fn append_all(archive: &mut Archive, first: u64, payloads: &[Vec<u8>]) {
    for (i, p) in payloads.iter().enumerate() {
        archive.append(first + i as u64, &[(KIND, p)]).unwrap();
    }
}

fn check_all(archive: &Archive, first: u64, payloads: &[Vec<u8>]) {
    assert_eq!(
        archive.last_block(),
        (!payloads.is_empty()).then(|| first + payloads.len() as u64 - 1)
    );
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(
            &archive.read(KIND, first + i as u64).unwrap(),
            p,
            "block {}",
            first + i as u64
        );
    }
    if !payloads.is_empty() {
        let last = first + payloads.len() as u64 - 1;
        assert_eq!(archive.read_range(KIND, first, last).unwrap(), payloads);
    }
    assert!(matches!(
        archive.read(KIND, first + payloads.len() as u64),
        Err(ArchiveError::Missing { .. })
    ));
}

fn modes() -> [IoChoice; 2] {
    [IoChoice::Auto, IoChoice::Pwrite]
}

#[test]
fn blocks_read_back_across_segments_reopens_and_both_io_paths() {
    for io in modes() {
        let dir = tempfile::tempdir().unwrap();
        let payloads: Vec<Vec<u8>> = (1..=60)
            .map(|n| payload(1, n, (n as usize * 37) % 900))
            .collect();
        {
            let (mut archive, report) = Archive::open(dir.path(), config(io, 2_000)).unwrap();
            assert_eq!(report, OpenReport::default());
            append_all(&mut archive, 1, &payloads[..40]);
            archive.sync().unwrap();
            assert_eq!(archive.durable_block(), Some(40));
            check_all(&archive, 1, &payloads[..40]);
            assert!(archive.segments().len() > 5, "small segments roll over");
        }
        let (mut archive, report) = Archive::open(dir.path(), config(io, 2_000)).unwrap();
        assert_eq!(report.torn_bytes, 0);
        check_all(&archive, 1, &payloads[..40]);
        append_all(&mut archive, 41, &payloads[40..]);
        // Reads of blocks not yet durable wait for the writer.
        assert_eq!(archive.read(KIND, 60).unwrap(), payloads[59]);
        check_all(&archive, 1, &payloads);
        for s in archive.segments() {
            assert_eq!(std::fs::metadata(&s.path).unwrap().len(), s.bytes);
            assert_eq!(
                s.path.file_name().unwrap().to_str().unwrap(),
                format::segment_name(s.first)
            );
        }
    }
}

/// The fallback is what `--archive-io pwrite` gives, and both paths write the same bytes.
#[test]
fn the_pwrite_fallback_is_chosen_when_forced_and_writes_the_same_files() {
    let payloads: Vec<Vec<u8>> = (1..=30)
        .map(|n| payload(2, n, 100 + n as usize * 50))
        .collect();
    let mut files = Vec::new();
    for io in [IoChoice::Auto, IoChoice::Pwrite] {
        let dir = tempfile::tempdir().unwrap();
        let (mut archive, _) = Archive::open(dir.path(), config(io, 4_000)).unwrap();
        if io == IoChoice::Pwrite {
            assert_eq!(archive.io_mode(), IoMode::Pwrite);
        } else if io::new_ring().is_ok() {
            assert_eq!(
                archive.io_mode(),
                IoMode::IoUring,
                "auto takes io_uring when it works"
            );
        }
        append_all(&mut archive, 1, &payloads);
        archive.sync().unwrap();
        let bytes: Vec<(String, Vec<u8>)> = archive
            .segments()
            .iter()
            .map(|s| {
                (
                    format::segment_name(s.first),
                    std::fs::read(&s.path).unwrap(),
                )
            })
            .collect();
        files.push(bytes);
    }
    assert_eq!(files[0], files[1]);
}

#[test]
fn io_uring_when_required_opens_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    match (
        Archive::open(dir.path(), config(IoChoice::IoUring, 1 << 20)),
        io::new_ring(),
    ) {
        (Ok((archive, _)), Ok(_)) => assert_eq!(archive.io_mode(), IoMode::IoUring),
        (Err(ArchiveError::UringUnavailable(_)), Err(_)) => {}
        (got, ring) => panic!(
            "open {:?} with a ring {:?}",
            got.map(|_| ()),
            ring.map(|_| ())
        ),
    }
}

/// An archive's record locations, for tests that damage them: (segment path, offset, end).
fn records(archive: &Archive) -> Vec<(PathBuf, u64, u64)> {
    archive.kinds[KIND.index()]
        .locs
        .iter()
        .map(|l| {
            (
                archive.segments[l.segment as usize].info.path.clone(),
                l.offset,
                l.offset + RECORD_HEADER_BYTES as u64 + u64::from(l.len),
            )
        })
        .collect()
}

/// What a crash can leave in the last segment's file.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut at a byte (a write that never reached the disk).
    Truncate,
    /// Bytes overwritten from there on with garbage (pages of a later write, torn).
    Garbage(Vec<u8>),
    /// One byte flipped (a sector written half).
    Flip,
    /// Zeros appended (a file extended but not filled).
    Zeros(usize),
    /// A whole, well-formed record that is not a block's last (a group cut between records).
    Unfinished,
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Garbage),
        Just(Damage::Flip),
        (1usize..100).prop_map(Damage::Zeros),
        Just(Damage::Unfinished),
    ]
}

/// Damages the last segment at `at` (a fraction of its length); returns how many blocks must
/// survive given `records`.
fn damage(records: &[(PathBuf, u64, u64)], what: &Damage, at: f64) -> u64 {
    let path = records.last().unwrap().0.clone();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let offset = ((len as f64 * at) as u64).min(len.saturating_sub(1));
    // Blocks whose record ends at or before `offset` in this segment, and all in earlier ones.
    let intact_before = |offset: u64| {
        records
            .iter()
            .filter(|(p, _, end)| *p != path || *end <= offset)
            .count() as u64
    };
    match what {
        Damage::Truncate => {
            file.set_len(offset).unwrap();
            intact_before(offset)
        }
        Damage::Garbage(bytes) => {
            // Garbage equal to what was there damages nothing up to where it first differs.
            let mut old = vec![0u8; bytes.len().min((len - offset) as usize)];
            file.read_exact_at(&mut old, offset).unwrap();
            file.write_all_at(bytes, offset).unwrap();
            match old.iter().zip(bytes).position(|(a, b)| a != b) {
                Some(i) => intact_before(offset + i as u64),
                None => records.len() as u64,
            }
        }
        Damage::Flip => {
            let mut b = [0u8];
            file.read_exact_at(&mut b, offset).unwrap();
            file.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
            intact_before(offset)
        }
        Damage::Zeros(n) => {
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&vec![0u8; *n]).unwrap();
            records.len() as u64
        }
        Damage::Unfinished => {
            let next = records.len() as u64 + 1;
            let record = format::encode_record(KIND, next, false, b"no last flag");
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&record).unwrap();
            records.len() as u64
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random appends, a crash simulated at a random byte of the last segment, reopen: every
    /// block before the damage is there and intact, nothing from the damaged record on is
    /// returned, the tail was repaired (once), and the archive takes blocks again from there.
    #[test]
    fn a_damaged_tail_is_cut_at_the_damage_and_nothing_after_it_is_returned(
        sizes in prop::collection::vec(0usize..3_000, 1..40),
        segment_bytes in 1_000u64..20_000,
        what in damage_strategy(),
        at in 0.0f64..1.0,
        pwrite in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let io = if pwrite { IoChoice::Pwrite } else { IoChoice::Auto };
        let dir = tempfile::tempdir().unwrap();
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| payload(seed, i as u64 + 1, *size))
            .collect();
        let locations = {
            let (mut archive, _) = Archive::open(dir.path(), config(io, segment_bytes)).unwrap();
            append_all(&mut archive, 1, &payloads);
            archive.sync().unwrap();
            records(&archive)
        };
        let survive = damage(&locations, &what, at);
        let (read_only, seen) = Archive::open_read_only(dir.path(), config(io, segment_bytes)).unwrap();
        prop_assert_eq!(read_only.last_block().unwrap_or(0), survive);
        drop(read_only);
        let (mut archive, report) = Archive::open(dir.path(), config(io, segment_bytes)).unwrap();
        prop_assert_eq!(report, seen, "read-only open reports what open repairs");
        let kept = &payloads[..survive as usize];
        check_all(&archive, 1, kept);
        // Whatever the damage, the archive goes on from its last whole block.
        let more: Vec<Vec<u8>> = (survive + 1..survive + 6).map(|n| payload(!seed, n, 500)).collect();
        append_all(&mut archive, survive + 1, &more);
        archive.sync().unwrap();
        drop(archive);
        let (archive, report) = Archive::open(dir.path(), config(io, segment_bytes)).unwrap();
        prop_assert_eq!(report.torn_bytes, 0, "a repaired archive reopens clean");
        let all: Vec<Vec<u8>> = kept.iter().chain(&more).cloned().collect();
        check_all(&archive, 1, &all);
    }
}

/// A crash right after a segment was created leaves it empty or with half its header: it is
/// removed, and the previous segment ends the archive.
#[test]
fn an_empty_or_half_written_last_segment_is_removed() {
    for header_bytes in [0usize, 7] {
        let dir = tempfile::tempdir().unwrap();
        let payloads: Vec<Vec<u8>> = (1..=5).map(|n| payload(3, n, 400)).collect();
        {
            let (mut archive, _) =
                Archive::open(dir.path(), config(IoChoice::Auto, 1 << 20)).unwrap();
            append_all(&mut archive, 1, &payloads);
        }
        let path = dir.path().join(format::segment_name(6));
        std::fs::write(&path, &format::segment_header()[..header_bytes]).unwrap();
        let (archive, report) = Archive::open(dir.path(), config(IoChoice::Auto, 1 << 20)).unwrap();
        assert_eq!(report.torn_bytes, header_bytes as u64);
        assert!(!path.exists());
        check_all(&archive, 1, &payloads);
    }
}

/// Corruption in a segment that is not the last is not a torn tail: open refuses rather than
/// dropping every block after it.
#[test]
fn a_damaged_segment_before_the_last_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (1..=20).map(|n| payload(4, n, 300)).collect();
    let first_segment = {
        let (mut archive, _) = Archive::open(dir.path(), config(IoChoice::Auto, 1_000)).unwrap();
        append_all(&mut archive, 1, &payloads);
        archive.sync().unwrap();
        archive.segments()[0].path.clone()
    };
    let len = std::fs::metadata(&first_segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&first_segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert!(matches!(
        Archive::open(dir.path(), config(IoChoice::Auto, 1_000)),
        Err(ArchiveError::Corrupt { .. })
    ));
    // A flipped payload byte in an earlier segment is caught when the block is read.
    let (archive, _) = {
        OpenOptions::new()
            .write(true)
            .open(&first_segment)
            .unwrap()
            .set_len(len)
            .unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&first_segment)
            .unwrap();
        let mut b = [0u8];
        file.read_exact_at(&mut b, len - 4).unwrap();
        file.write_all_at(&[b[0] ^ 1], len - 4).unwrap();
        Archive::open(dir.path(), config(IoChoice::Auto, 1_000)).unwrap()
    };
    let damaged = archive.segments()[1].first - 1;
    assert!(matches!(
        archive.read(KIND, damaged),
        Err(ArchiveError::Corrupt { .. })
    ));
    assert_eq!(
        archive.read(KIND, damaged + 1).unwrap(),
        payloads[damaged as usize]
    );
}

/// The writer groups: blocks appended faster than the disk syncs share fsyncs, and waiting for
/// a block waits for exactly that durability.
#[test]
fn appends_are_grouped_and_durability_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut archive, _) = Archive::open(dir.path(), config(IoChoice::Auto, 1 << 30)).unwrap();
    assert_eq!(archive.durable_block(), None);
    let payloads: Vec<Vec<u8>> = (1..=2_000).map(|n| payload(5, n, 300)).collect();
    append_all(&mut archive, 1, &payloads);
    archive.wait_durable(1_000).unwrap();
    assert!(archive.durable_block().unwrap() >= 1_000);
    archive.sync().unwrap();
    assert_eq!(archive.durable_block(), Some(2_000));
    check_all(&archive, 1, &payloads);
}

/// Blocks of several records cut back to any block (a segment's middle, its first block, the
/// archive's first, before it): what is left reads back, what was cut is gone, the files match
/// a reopen, and appends go on from the cut.
#[test]
fn truncate_after_removes_the_later_blocks_and_appends_resume_there() {
    let kinds = [RecordKind::Body, RecordKind::Receipts];
    let record = |seed: u64, n: u64, kind: RecordKind| payload(seed ^ kind as u64, n, 150);
    let append = |archive: &mut Archive, seed: u64, blocks: std::ops::RangeInclusive<u64>| {
        for n in blocks {
            let (body, receipts) = (record(seed, n, kinds[0]), record(seed, n, kinds[1]));
            archive
                .append(n, &[(kinds[0], &body), (kinds[1], &receipts)])
                .unwrap();
        }
    };
    for keep in [
        None,
        Some(2),
        Some(5),
        Some(9),
        Some(13),
        Some(19),
        Some(20),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let open = || Archive::open(dir.path(), config(IoChoice::Auto, 1_000)).unwrap();
        let (mut archive, _) = open();
        append(&mut archive, 6, 3..=20);
        archive.truncate_after(keep).unwrap();
        let last = keep.filter(|k| *k >= 3);
        assert_eq!(archive.last_block(), last, "keep {keep:?}");
        archive.sync().unwrap();
        assert_eq!(archive.durable_block(), last);
        let check = |archive: &Archive| {
            for n in 3..=last.unwrap_or(2) {
                for kind in kinds {
                    assert_eq!(archive.read(kind, n).unwrap(), record(6, n, kind));
                }
            }
            let gone = last.map_or(3, |l| l + 1);
            assert!(matches!(
                archive.read(kinds[0], gone),
                Err(ArchiveError::Missing { .. })
            ));
        };
        check(&archive);
        drop(archive);
        let (mut archive, report) = open();
        assert_eq!(
            report.torn_bytes, 0,
            "keep {keep:?}: the cut leaves whole files"
        );
        check(&archive);
        let next = last.map_or(3, |l| l + 1);
        append(&mut archive, 7, next..=next + 4);
        archive.sync().unwrap();
        drop(archive);
        let (archive, _) = open();
        assert_eq!(archive.last_block(), Some(next + 4));
        for n in next..=next + 4 {
            assert_eq!(archive.read(kinds[1], n).unwrap(), record(7, n, kinds[1]));
        }
    }
}

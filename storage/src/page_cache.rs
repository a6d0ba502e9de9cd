//! The database file's pages re-read into the OS page cache one page at a time after a bulk
//! write.
//!
//! Linux (6.x; ext4 since 6.16) caches a file in large folios where it can: a large write or a
//! readahead fills one folio of up to 2 MiB. A commit writes its dirty pages 4 KiB each, at
//! scattered offsets (one `pwritev` a run of adjacent pages), and a buffered write into part of
//! a large folio walks every block of the folio (`ext4_block_write_begin`,
//! `block_commit_write`): on this machine ~9 µs a page written into 2 MiB folios against
//! ~2.5 µs into 4 KiB ones (BENCHMARKS.md, "Pages cached one by one"). The bulk writers
//! (genesis, state sync) write megabytes at a time, which left the whole state cached in large
//! folios, and a block's ~31,000 page writes at 10,000,000 accounts paid the walk on each.
//!
//! So once a bulk write is synced its pages are clean: they are dropped from the cache
//! (`POSIX_FADV_DONTNEED`) and read back with readahead off (`POSIX_FADV_RANDOM`), one page a
//! read, which caches each page in a folio of its own. The store's memory map is opened with
//! readahead off too (`MDBX_NORDAHEAD`), so pages first read by MDBX itself come in alike. Pages
//! the file grows by in a commit's runs of new pages may still land in small large folios; the
//! store bench measures blocks after the state is built.

use crate::StorageError;
use rustix::fs::{Advice, fadvise};
use std::{fs::File, os::unix::fs::FileExt, path::Path, thread, time::Instant};

/// The unit read back: MDBX's page and the kernel's base page.
const PAGE_BYTES: u64 = crate::DB_PAGE_BYTES as u64;
/// Threads reading the file back: the reads wait on the disk more than they use a core.
const READERS: u64 = 4;

/// What [`recache`] did.
#[derive(Debug, Clone, Copy)]
pub struct Recached {
    pub bytes: u64,
    pub seconds: f64,
}

/// Drops the cached pages of `path` (synced, so clean) and reads its first `bytes` (what the
/// database uses of it) back a page at a time.
pub(crate) fn recache(path: &Path, bytes: u64) -> Result<Recached, StorageError> {
    let started = Instant::now();
    let io = |e: std::io::Error| StorageError::Recache(e.to_string());
    let file = File::open(path).map_err(io)?;
    fadvise(&file, 0, None, Advice::DontNeed).map_err(|e| io(e.into()))?;
    fadvise(&file, 0, None, Advice::Random).map_err(|e| io(e.into()))?;
    let pages = bytes.div_ceil(PAGE_BYTES);
    let per_reader = pages.div_ceil(READERS);
    thread::scope(|scope| {
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let file = &file;
                scope.spawn(move || -> std::io::Result<()> {
                    let mut page = [0u8; PAGE_BYTES as usize];
                    let end = ((i + 1) * per_reader).min(pages);
                    for n in i * per_reader..end {
                        // A short read at the end of the file is fine: its page is cached.
                        file.read_at(&mut page, n * PAGE_BYTES)?;
                    }
                    Ok(())
                })
            })
            .collect();
        readers
            .into_iter()
            .try_for_each(|r| r.join().expect("a page reader panicked"))
    })
    .map_err(io)?;
    Ok(Recached {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recache_reads_back_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        // Ten pages and a partial one: the last read is short.
        let content: Vec<u8> = (0..10 * PAGE_BYTES + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        let done = recache(&path, content.len() as u64).unwrap();
        assert_eq!(done.bytes, content.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = recache(&dir.path().join("none"), PAGE_BYTES).unwrap_err();
        assert!(matches!(err, StorageError::Recache(_)), "{err}");
    }
}

//! Cutting an archive back: a torn tail found at open ([`Archive::repair`]), and blocks appended
//! whose commit elsewhere never happened ([`Archive::truncate_after`]).

use super::{
    Archive, ArchiveError, KindIndex, Segment, SegmentInfo, Torn, format::SEGMENT_HEADER_BYTES,
    io_err, metrics,
};
use std::{
    fs::{File, OpenOptions},
    path::Path,
    sync::Arc,
};

impl Archive {
    /// Cuts the torn tail of the last segment (or removes a last segment with no whole block).
    pub(super) fn repair(&mut self, torn: Torn) -> Result<(), ArchiveError> {
        let segment = self.segments.last().expect("a torn segment");
        let path = segment.info.path.clone();
        if !torn.whole_segment {
            let file = segment.file()?;
            file.set_len(segment.info.bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            self.segments.pop();
        }
        ::metrics::counter!(metrics::TORN_TAIL_REPAIRS, metrics::LABEL => self.label).increment(1);
        ::metrics::counter!(metrics::TORN_TAIL_BYTES, metrics::LABEL => self.label)
            .increment(torn.bytes);
        tracing::warn!(target: "storage::archive", path = %path.display(), bytes = torn.bytes, removed = torn.whole_segment, "truncated a torn tail of the block archive (a crash mid-append)");
        Ok(())
    }

    /// Removes every block after `keep` (every block for `None`) from the files and the index:
    /// blocks appended whose commit elsewhere never happened (the state store appends a block's
    /// records before its database commit). Waits for the writer first, so nothing queued lands
    /// behind the cut.
    pub fn truncate_after(&mut self, keep: Option<u64>) -> Result<(), ArchiveError> {
        let Some(last) = self.last_block else {
            return Ok(());
        };
        let cut = keep.map_or(0, |k| k + 1);
        if cut > last {
            return Ok(());
        }
        self.sync()?;
        // Where the first removed block starts: its lowest record (no block before the
        // archive's first: then everything goes).
        let start = self
            .kinds
            .iter()
            .filter_map(|index| index.get(cut.max(index.first)))
            .min_by_key(|l| (l.segment, l.offset))
            .expect("the archive holds block `last`");
        for segment in self.segments.drain(start.segment as usize + 1..) {
            std::fs::remove_file(&segment.info.path).map_err(io_err(&segment.info.path))?;
        }
        let segment = self.segments.pop().expect("the cut's segment");
        if start.offset == SEGMENT_HEADER_BYTES as u64 {
            std::fs::remove_file(&segment.info.path).map_err(io_err(&segment.info.path))?;
        } else {
            let path = &segment.info.path;
            let file = open_rw(path)?;
            file.set_len(start.offset)
                .and_then(|()| file.sync_all())
                .map_err(io_err(path))?;
            self.segments.push(Segment {
                info: SegmentInfo {
                    bytes: start.offset,
                    ..segment.info
                },
                file: Some(Arc::new(file)),
            });
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        // The segment now last is appended to, so it is held open.
        if let Some(last) = self.segments.last_mut().filter(|s| s.file.is_none()) {
            let path = &last.info.path;
            let file = open_rw(path)?;
            last.file = Some(Arc::new(file));
        }
        for index in &mut self.kinds {
            let keep_locs = cut.saturating_sub(index.first);
            index
                .locs
                .truncate(usize::try_from(keep_locs).unwrap_or(usize::MAX));
        }
        self.last_block = self
            .kinds
            .iter()
            .filter_map(KindIndex::next)
            .max()
            .map(|n| n - 1);
        self.durable.truncated(self.last_block);
        ::metrics::gauge!(metrics::SEGMENTS, metrics::LABEL => self.label)
            .set(self.segments.len() as f64);
        tracing::warn!(target: "storage::archive", dir = %self.dir.display(), removed_from = cut, removed_to = last, "removed archive blocks that were never committed");
        Ok(())
    }
}

fn open_rw(path: &Path) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

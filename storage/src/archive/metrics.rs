//! The archive's metrics (docs/metrics.md lists them), each labelled with its archive
//! (`ArchiveConfig::label`).

use std::time::Duration;

/// The label naming the archive.
pub const LABEL: &str = "archive";
pub const APPENDS: &str = "kestrel_archive_appends_total";
pub const APPEND_BYTES: &str = "kestrel_archive_append_bytes_total";
pub const FSYNCS: &str = "kestrel_archive_fsyncs_total";
pub const FSYNC_SECONDS: &str = "kestrel_archive_fsync_seconds";
pub const READS: &str = "kestrel_archive_reads_total";
pub const READ_BYTES: &str = "kestrel_archive_read_bytes_total";
pub const TORN_TAIL_REPAIRS: &str = "kestrel_archive_torn_tail_repairs_total";
pub const TORN_TAIL_BYTES: &str = "kestrel_archive_torn_tail_bytes_total";
pub const DURABLE_BLOCK: &str = "kestrel_archive_durable_block";
pub const SEGMENTS: &str = "kestrel_archive_segments";

pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(APPENDS, "Records appended to the block archive");
    describe_counter!(
        APPEND_BYTES,
        Unit::Bytes,
        "Bytes appended to the block archive (record headers included)"
    );
    describe_counter!(
        FSYNCS,
        "Groups of archive writes made durable (one fsync per segment file the group touched)"
    );
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Time to write one group of archive records and fsync it"
    );
    describe_counter!(READS, "Records read from the block archive");
    describe_counter!(READ_BYTES, Unit::Bytes, "Bytes read from the block archive");
    describe_counter!(
        TORN_TAIL_REPAIRS,
        "Torn archive tails (a crash mid-append) truncated at open"
    );
    describe_counter!(
        TORN_TAIL_BYTES,
        Unit::Bytes,
        "Bytes of torn archive tails truncated at open"
    );
    describe_gauge!(DURABLE_BLOCK, "Highest block durable in the archive");
    describe_gauge!(SEGMENTS, "Segment files of the block archive");
}

/// Every counter exported from open at 0, so that a series exists before its first event (a
/// torn tail may never happen) and alerts can test it for `> 0`.
pub(super) fn register(label: &'static str) {
    for name in [
        APPENDS,
        APPEND_BYTES,
        FSYNCS,
        READS,
        READ_BYTES,
        TORN_TAIL_REPAIRS,
        TORN_TAIL_BYTES,
    ] {
        metrics::counter!(name, LABEL => label).increment(0);
    }
}

pub(super) fn group_synced(label: &'static str, elapsed: Duration) {
    metrics::counter!(FSYNCS, LABEL => label).increment(1);
    metrics::histogram!(FSYNC_SECONDS, LABEL => label).record(elapsed.as_secs_f64());
}

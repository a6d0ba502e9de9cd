//! `kestrel db stats`: what a stopped node's datadir holds, per MDBX table and per block-archive
//! segment, entries and bytes; printed as a table, or one JSON object with `--json`.

use crate::{
    cli::DbStatsArgs,
    validator::store::{ArchiveSegment, archive_stats},
};
use eyre::WrapErr;
use kestrel_storage::{Store, TableStats};

#[derive(serde::Serialize)]
struct Stats {
    tables: Vec<TableStats>,
    segments: Vec<ArchiveSegment>,
}

pub fn stats(args: &DbStatsArgs) -> eyre::Result<()> {
    let store = Store::open(&args.datadir).wrap_err("opening the database")?;
    let tables = store.view(|r| r.table_stats())??;
    let segments = archive_stats(&args.datadir)?;
    let stats = Stats { tables, segments };
    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    println!("{:<24} {:>14} {:>16}", "table", "entries", "bytes");
    for t in &stats.tables {
        println!("{:<24} {:>14} {:>16}", t.table, t.entries, t.bytes);
    }
    let (entries, bytes) = stats
        .tables
        .iter()
        .fold((0, 0), |(e, b), t| (e + t.entries, b + t.bytes));
    println!("{:<24} {:>14} {:>16}", "all tables", entries, bytes);
    println!();
    println!("{:<48} {:>14} {:>16}", "archive segment", "blocks", "bytes");
    for s in &stats.segments {
        println!("{:<48} {:>14} {:>16}", s.file, s.blocks, s.bytes);
    }
    Ok(())
}

//! The allocator's side of the node's memory. mimalloc keeps freed memory mapped for a while,
//! which under load saves refaulting it ([`setup_allocator`]); past a soft limit on the
//! process's own memory, a watchdog has it given back at once ([`spawn_watchdog`]), so that a
//! burst (a transaction flood: RPC calls in flight, a full ingress queue and pool) does not leave
//! the process holding its peak.

use std::{thread, time::Duration};

/// `mi_option_purge_delay` in mimalloc v3's option numbering (the crate names only v2's).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp` in mimalloc v3's numbering.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
/// mimalloc's default purge delay, which identifies the option above.
const MI_PURGE_DELAY_DEFAULT_MS: std::ffi::c_long = 1_000;
/// How long freed memory stays mapped before it goes back to the OS. Blocks live a few seconds in
/// the pipeline (pool, execution, commit, RPC bodies); with mimalloc's 1 s, their memory was
/// returned and faulted in again, zeroing (huge) pages: ~7% of the node's CPU under load.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Sets the allocator up for the node: freed memory kept mapped ([`PURGE_DELAY_MS`]), and no
/// transparent huge pages.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), and a huge page stays resident
/// while any 4 KiB of it is live, so memory freed after a burst was not given back: under the
/// flood test, anonymous RSS peaked at 1,099 MiB with huge pages and 775 MiB without, the same
/// run otherwise (docs/SECURITY.md, "Flood"), against about 380 MiB the heap held at its peak
/// (heaptrack). Under the 10,000 TPS benchmark the node used no more CPU without them
/// (BENCHMARKS.md). The prctl covers the arenas mimalloc mapped before `main` too.
pub fn setup_allocator() {
    // SAFETY: reading and setting an allocator option is allowed at any time.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_PURGE_DELAY_DEFAULT_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
    }
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only an old kernel (before 3.15) lacks it; the node runs, holding more after bursts.
        eprintln!("could not turn transparent huge pages off for the process: {e}");
    }
}

/// Anonymous RSS (the process's own memory; the database's mapped pages are page cache) above
/// which the watchdog has the allocator return freed memory at once. Under the 10,000 TPS
/// benchmark the node holds 0.5-0.8 GiB; a 100,000-transaction flood took it to 1.3 GiB, of
/// which 0.55 GiB was freed memory waiting out the purge delay (docs/SECURITY.md, "Flood").
pub const RETURN_FREED_ABOVE_BYTES: u64 = 1 << 30;
/// How often the watchdog looks.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub fn describe_metrics() {
    metrics::describe_counter!(
        "kestrel_node_memory_returns_total",
        "Times the process was over its memory soft limit and the allocator returned freed memory"
    );
}

/// How often at most a thread that goes idle collects its allocator heap.
const IDLE_COLLECT_INTERVAL: Duration = Duration::from_millis(500);

/// For a thread about to wait for work (RPC's workers, on parking). mimalloc returns a page
/// only from the thread that owns it, when that thread allocates; memory other threads freed
/// into it (a flood's parsed calls, freed after admission) stays with an idle thread until then.
/// At most every [`IDLE_COLLECT_INTERVAL`] per thread, so a busy runtime parking thousands of
/// times a second does not pay for it.
pub fn collect_on_idle() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    if LAST
        .get()
        .is_some_and(|at| now.duration_since(at) < IDLE_COLLECT_INTERVAL)
    {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: collecting the calling thread's own heap is allowed at any time.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Starts the watchdog thread (it runs until the process exits).
pub fn spawn_watchdog() -> std::io::Result<()> {
    // Exported from start-up, so that a dashboard's rate() has a zero to start from.
    metrics::counter!("kestrel_node_memory_returns_total").increment(0);
    thread::Builder::new()
        .name("memory".into())
        .spawn(|| {
            loop {
                thread::sleep(WATCH_INTERVAL);
                if anon_rss().is_some_and(|bytes| bytes > RETURN_FREED_ABOVE_BYTES) {
                    // SAFETY: mi_collect may be called from any thread at any time; `true` also
                    // purges memory other threads freed that is waiting out the purge delay.
                    unsafe { libmimalloc_sys::mi_collect(true) };
                    metrics::counter!("kestrel_node_memory_returns_total").increment(1);
                }
            }
        })
        .map(drop)
}

/// The process's anonymous resident bytes (`RssAnon` of /proc/self/status).
fn anon_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

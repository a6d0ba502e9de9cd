//! The two ways the archive reaches the disk, chosen once at open: io_uring (writes, fsyncs and
//! reads submitted in batches, one `io_uring_enter` per batch), or plain `pwrite`/`pread` and
//! `fdatasync` where io_uring is unavailable (a kernel before 5.6, a seccomp profile that blocks
//! it, `sysctl kernel.io_uring_disabled=2`).

use io_uring::{IoUring, opcode, squeue, types};
use std::{
    fs::File,
    io::{self, IoSlice},
    os::unix::{fs::FileExt, io::AsRawFd},
    sync::Arc,
};

/// Submission queue entries of each ring: a group's writes are one `writev` per file run plus
/// one fsync per file, far below it; reads are batched to it.
pub const RING_ENTRIES: u32 = 64;
/// Records in one `writev` (Linux's `IOV_MAX`).
const IOVECS_MAX: usize = 1024;

/// What the node was asked for (`--archive-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoChoice {
    /// io_uring if the kernel allows it, else the fallback.
    #[default]
    Auto,
    /// io_uring or fail to open.
    IoUring,
    /// The fallback, always (tests, benchmarks, a kernel whose io_uring misbehaves).
    Pwrite,
}

/// What the archive uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    IoUring,
    Pwrite,
}

impl IoMode {
    /// The `archive_io` label of `kestrel_node_info` and the start-up log line.
    pub fn label(self) -> &'static str {
        match self {
            IoMode::IoUring => "io_uring",
            IoMode::Pwrite => "pwrite",
        }
    }

    /// The mode `choice` gives on this kernel; `Err` only when io_uring was required. Probes by
    /// building a ring and asking the kernel for the opcodes the archive submits.
    pub fn resolve(choice: IoChoice) -> io::Result<Self> {
        match choice {
            IoChoice::Pwrite => Ok(IoMode::Pwrite),
            IoChoice::IoUring => new_ring().map(|_| IoMode::IoUring),
            IoChoice::Auto => match new_ring() {
                Ok(_) => Ok(IoMode::IoUring),
                Err(err) => {
                    tracing::warn!(target: "storage::archive", %err, "io_uring unavailable; the archive uses pwrite/pread and fdatasync");
                    Ok(IoMode::Pwrite)
                }
            },
        }
    }
}

/// A ring that can run the archive's opcodes, or why not.
pub fn new_ring() -> io::Result<IoUring> {
    probed(IoUring::new(RING_ENTRIES)?)
}

/// A ring for the one thread that creates it and alone submits to it (the writer stage):
/// completions are run when that thread waits (`DEFER_TASKRUN`, Linux 6.1) instead of
/// interrupting it; a plain ring on kernels without it.
fn new_thread_ring() -> io::Result<IoUring> {
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
    {
        Ok(ring) => probed(ring),
        Err(_) => new_ring(),
    }
}

fn probed(ring: IoUring) -> io::Result<IoUring> {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (name, code) in [
        ("writev", opcode::Writev::CODE),
        ("read", opcode::Read::CODE),
        ("fsync", opcode::Fsync::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring without {name}"),
            ));
        }
    }
    Ok(ring)
}

/// Bytes for one file at one offset.
pub struct WriteOp<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub bytes: &'a [u8],
}

/// A read of `buf.len()` bytes at `offset`.
pub struct ReadOp<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub buf: &'a mut [u8],
}

pub enum Disk {
    /// Boxed: a ring is a few hundred bytes, the fallback nothing.
    Uring(Box<IoUring>),
    Pwrite,
}

impl Disk {
    pub fn new(mode: IoMode) -> io::Result<Self> {
        Ok(match mode {
            IoMode::IoUring => Disk::Uring(Box::new(new_ring()?)),
            IoMode::Pwrite => Disk::Pwrite,
        })
    }

    /// For a thread that alone uses it, created on that thread.
    pub fn for_this_thread(mode: IoMode) -> io::Result<Self> {
        Ok(match mode {
            IoMode::IoUring => Disk::Uring(Box::new(new_thread_ring()?)),
            IoMode::Pwrite => Disk::Pwrite,
        })
    }

    /// Writes every op, then makes them durable: `fdatasync` of each file in `sync`, then a full
    /// fsync of `dir` if given (a new segment's directory entry). Ops on one file at adjacent
    /// offsets go out as one `writev`.
    pub fn write_and_sync(
        &mut self,
        ops: &[WriteOp<'_>],
        sync: &[Arc<File>],
        dir: Option<&File>,
    ) -> io::Result<()> {
        match self {
            Disk::Pwrite => write_and_sync_plain(ops, sync, dir),
            Disk::Uring(ring) => {
                if uring_write_and_sync(ring, ops, sync, dir)? {
                    Ok(())
                } else {
                    // A short or failed write (a full disk answers short before it answers
                    // ENOSPC): the plain path writes the same bytes at the same offsets again
                    // and reports the error, if any, with its errno.
                    write_and_sync_plain(ops, sync, dir)
                }
            }
        }
    }

    /// Fills every op's buffer.
    pub fn read(&mut self, ops: &mut [ReadOp<'_>]) -> io::Result<()> {
        match self {
            Disk::Pwrite => {
                for op in ops {
                    op.file.read_exact_at(op.buf, op.offset)?;
                }
                Ok(())
            }
            Disk::Uring(ring) => uring_read(ring, ops),
        }
    }
}

/// The fallback writes each run of adjacent records with one `pwritev`, as the io_uring path
/// submits one `writev`: the two paths then differ in how they reach the kernel, not in how
/// many calls they make.
fn write_and_sync_plain(
    ops: &[WriteOp<'_>],
    sync: &[Arc<File>],
    dir: Option<&File>,
) -> io::Result<()> {
    for mut run in runs(ops) {
        let mut slices = &mut run.slices[..];
        let mut offset = run.offset;
        while !slices.is_empty() {
            let written = rustix::io::pwritev(run.file, slices, offset)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += written as u64;
            IoSlice::advance_slices(&mut slices, written);
        }
    }
    for file in sync {
        file.sync_data()?;
    }
    if let Some(dir) = dir {
        dir.sync_all()?;
    }
    Ok(())
}

/// One run of adjacent writes to one file: a `writev`.
struct Run<'a> {
    file: &'a File,
    fd: i32,
    offset: u64,
    slices: Vec<IoSlice<'a>>,
    len: usize,
}

fn runs<'a>(ops: &'a [WriteOp<'a>]) -> Vec<Run<'a>> {
    let mut runs: Vec<Run<'a>> = Vec::new();
    for op in ops {
        let fd = op.file.as_raw_fd();
        match runs.last_mut() {
            Some(run)
                if run.fd == fd
                    && run.offset + run.len as u64 == op.offset
                    && run.slices.len() < IOVECS_MAX =>
            {
                run.slices.push(IoSlice::new(op.bytes));
                run.len += op.bytes.len();
            }
            _ => runs.push(Run {
                file: op.file,
                fd,
                offset: op.offset,
                slices: vec![IoSlice::new(op.bytes)],
                len: op.bytes.len(),
            }),
        }
    }
    runs
}

/// The group's writes, then (`IO_DRAIN`: each starts once everything before it completed) the
/// fsyncs, in one submission when they fit the ring. `Ok(false)`: a write came back short or
/// failed, and the caller redoes the group the plain way.
fn uring_write_and_sync(
    ring: &mut IoUring,
    ops: &[WriteOp<'_>],
    sync: &[Arc<File>],
    dir: Option<&File>,
) -> io::Result<bool> {
    let runs = runs(ops);
    let syncs: Vec<squeue::Entry> = sync
        .iter()
        .map(|f| {
            opcode::Fsync::new(types::Fd(f.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        })
        .chain(dir.map(|d| opcode::Fsync::new(types::Fd(d.as_raw_fd())).build()))
        .collect();
    let capacity = RING_ENTRIES as usize;
    assert!(
        syncs.len() <= capacity,
        "{} files in one group",
        syncs.len()
    );
    let writes: Vec<squeue::Entry> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            opcode::Writev::new(
                types::Fd(run.fd),
                // `IoSlice` is ABI-compatible with `iovec` on Unix (std's guarantee).
                run.slices.as_ptr().cast(),
                run.slices.len() as u32,
            )
            .offset(run.offset)
            .build()
            .user_data(i as u64)
        })
        .collect();
    // Writes that do not fit with the fsyncs go first, a ring-full at a time.
    let (early, last) = writes.split_at(writes.len().saturating_sub(capacity - syncs.len()));
    let mut ok = true;
    for chunk in early.chunks(capacity) {
        ok &= submit_and_check(ring, chunk, &runs)?;
    }
    let mut tail: Vec<squeue::Entry> = last
        .iter()
        .cloned()
        .chain(syncs.into_iter().map(|e| e.user_data(u64::MAX)))
        .collect();
    let n = tail.len();
    for e in &mut tail[..n - 1] {
        *e = e.clone().flags(squeue::Flags::IO_LINK);
    }
    ok &= submit_and_check(ring, &tail, &runs)?;
    Ok(ok)
}

/// Submits `entries` and waits for all. A write's result must be its run's length; an fsync's
/// error is returned (after a failed fsync the page cache may have dropped the dirty pages, so
/// nothing can be retried: the caller's fatal policy applies).
fn submit_and_check(
    ring: &mut IoUring,
    entries: &[squeue::Entry],
    runs: &[Run<'_>],
) -> io::Result<bool> {
    // SAFETY: every entry points at iovecs (`runs`' slices) and files that outlive this call,
    // which returns only once the kernel completed all of them.
    let completions = unsafe { submit_all(ring, entries)? };
    let mut ok = true;
    let mut fsync_err = None;
    for (user_data, result) in completions {
        if user_data == u64::MAX {
            if result < 0 {
                fsync_err = Some(io::Error::from_raw_os_error(-result));
            }
        } else if result < 0 || result as usize != runs[user_data as usize].len {
            ok = false;
        }
    }
    // A failed write makes its fsync moot (the plain path redoes both); a failed fsync after
    // good writes is the error itself.
    match fsync_err {
        Some(err) if ok => Err(err),
        _ => Ok(ok),
    }
}

/// Submits `entries` and waits for every one of them; their `(user_data, result)` pairs in the
/// order they completed.
///
/// # Safety
/// Whatever the entries point at (buffers, iovecs, files) must stay valid until this returns.
unsafe fn submit_all(ring: &mut IoUring, entries: &[squeue::Entry]) -> io::Result<Vec<(u64, i32)>> {
    // SAFETY: the caller keeps what the entries point at alive until every one has completed,
    // which this waits for.
    unsafe {
        let mut sq = ring.submission();
        for entry in entries {
            sq.push(entry).expect("entries fit the ring");
        }
    }
    wait(ring, entries.len())?;
    let mut completions = Vec::with_capacity(entries.len());
    while completions.len() < entries.len() {
        let before = completions.len();
        completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        if completions.len() == before {
            wait(ring, entries.len() - before)?;
        }
    }
    Ok(completions)
}

/// Submits what is queued and waits for `want` completions; a signal only interrupts the wait
/// (the entries were consumed), so it is waited for again.
fn wait(ring: &mut IoUring, want: usize) -> io::Result<()> {
    loop {
        match ring.submit_and_wait(want) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

fn uring_read(ring: &mut IoUring, ops: &mut [ReadOp<'_>]) -> io::Result<()> {
    for chunk in ops.chunks_mut(RING_ENTRIES as usize) {
        let entries: Vec<squeue::Entry> = chunk
            .iter_mut()
            .enumerate()
            .map(|(i, op)| {
                opcode::Read::new(
                    types::Fd(op.file.as_raw_fd()),
                    op.buf.as_mut_ptr(),
                    op.buf.len() as u32,
                )
                .offset(op.offset)
                .build()
                .user_data(i as u64)
            })
            .collect();
        // SAFETY: every buffer and file outlives the submission, which is waited for to the end.
        let completions = unsafe { submit_all(ring, &entries)? };
        let mut results = vec![None; entries.len()];
        for (i, result) in completions {
            results[i as usize] = Some(result);
        }
        for (op, result) in chunk.iter_mut().zip(results) {
            let result = result.expect("every read completed");
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            // A short read (a signal, or a read across the end of a page-cache run): the rest
            // the plain way, which errors at a real end of file.
            let got = result as usize;
            if got < op.buf.len() {
                op.file
                    .read_exact_at(&mut op.buf[got..], op.offset + got as u64)?;
            }
        }
    }
    Ok(())
}

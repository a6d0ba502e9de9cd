//! Block-STM's collaborative scheduler (Gelashvili et al., "Block-STM", PPoPP 2023, Algorithms
//! 4 and 5): every thread takes the next task, execution or validation, from the lower of two
//! indexes, so validation follows execution closely and both run on all threads.
//!
//! A transaction's status goes ReadyToExecute → Executing → Executed, and back to ReadyToExecute
//! (with the incarnation number increased) through Aborting when its validation fails or when its
//! execution read an estimate: then it waits as a dependent of the transaction that wrote the
//! estimate and is resumed when that one finishes, instead of spinning or re-executing blindly.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A value alone on its cache line (two, for adjacent-line prefetching): threads updating
/// neighbouring transactions' states or the shared indexes would otherwise invalidate each
/// other's lines on every access (false sharing), which cost more than the second core gained.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    ReadyToExecute,
    Executing,
    Executed,
    Aborting,
}

#[derive(Debug)]
struct TxState {
    incarnation: usize,
    status: Status,
    /// Transactions whose execution read an estimate of this one.
    dependents: Vec<usize>,
}

/// A task for a thread: `(transaction, incarnation)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Task {
    Execute(usize, usize),
    Validate(usize, usize),
}

pub(super) struct Scheduler {
    txs: usize,
    execution_idx: Padded<AtomicUsize>,
    validation_idx: Padded<AtomicUsize>,
    /// Bumped whenever an index decreases, so `check_done` can tell a stable state.
    decrease_cnt: Padded<AtomicUsize>,
    active_tasks: Padded<AtomicUsize>,
    done: Padded<AtomicBool>,
    states: Box<[Padded<Mutex<TxState>>]>,
}

impl Scheduler {
    pub(super) fn new(txs: usize) -> Self {
        Self {
            txs,
            execution_idx: Padded::default(),
            validation_idx: Padded::default(),
            decrease_cnt: Padded::default(),
            active_tasks: Padded::default(),
            done: Padded::default(),
            states: (0..txs)
                .map(|_| {
                    Padded(Mutex::new(TxState {
                        incarnation: 0,
                        status: Status::ReadyToExecute,
                        dependents: Vec::new(),
                    }))
                })
                .collect(),
        }
    }

    /// Transactions handed out for execution so far (at most all of them).
    pub(super) fn started(&self) -> usize {
        self.execution_idx.load(Ordering::Relaxed).min(self.txs)
    }

    /// Every transaction is executed and validated.
    pub(super) fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn decrease_execution_idx(&self, target: usize) {
        self.execution_idx.fetch_min(target, Ordering::SeqCst);
        self.decrease_cnt.fetch_add(1, Ordering::SeqCst);
    }

    fn decrease_validation_idx(&self, target: usize) {
        self.validation_idx.fetch_min(target, Ordering::SeqCst);
        self.decrease_cnt.fetch_add(1, Ordering::SeqCst);
    }

    fn check_done(&self) {
        let observed = self.decrease_cnt.load(Ordering::SeqCst);
        let execution = self.execution_idx.load(Ordering::SeqCst);
        let validation = self.validation_idx.load(Ordering::SeqCst);
        if execution.min(validation) >= self.txs
            && self.active_tasks.load(Ordering::SeqCst) == 0
            && observed == self.decrease_cnt.load(Ordering::SeqCst)
        {
            self.done.store(true, Ordering::Release);
        }
    }

    /// Claims `tx` for execution if it is ready; the caller holds an active task either way.
    fn try_incarnate(&self, tx: usize) -> Option<usize> {
        if tx >= self.txs {
            return None;
        }
        let mut state = self.states[tx].lock();
        (state.status == Status::ReadyToExecute).then(|| {
            state.status = Status::Executing;
            state.incarnation
        })
    }

    fn next_to_execute(&self) -> Option<Task> {
        if self.execution_idx.load(Ordering::SeqCst) >= self.txs {
            self.check_done();
            return None;
        }
        self.active_tasks.fetch_add(1, Ordering::SeqCst);
        let tx = self.execution_idx.fetch_add(1, Ordering::SeqCst);
        match self.try_incarnate(tx) {
            Some(incarnation) => Some(Task::Execute(tx, incarnation)),
            None => {
                self.active_tasks.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }

    /// Unlike the paper's, the validation index does not move past a transaction that is not
    /// executed yet: that one's first execution writes new locations, so its finish would send
    /// the index back and every transaction validated past it would be validated again (a
    /// quarter to half of all validations on two threads).
    fn next_to_validate(&self) -> Option<Task> {
        let tx = self.validation_idx.load(Ordering::SeqCst);
        if tx >= self.txs {
            self.check_done();
            return None;
        }
        self.active_tasks.fetch_add(1, Ordering::SeqCst);
        {
            let state = self.states[tx].lock();
            if state.status == Status::Executed
                && self
                    .validation_idx
                    .compare_exchange(tx, tx + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return Some(Task::Validate(tx, state.incarnation));
            }
        }
        self.active_tasks.fetch_sub(1, Ordering::SeqCst);
        None
    }

    /// The next task, if one is available now (`None` does not mean the block is done):
    /// validation first, execution when validation waits for a transaction to execute.
    pub(super) fn next_task(&self) -> Option<Task> {
        let validation = self.validation_idx.load(Ordering::SeqCst);
        let execution = self.execution_idx.load(Ordering::SeqCst);
        if validation < execution
            && let Some(task) = self.next_to_validate()
        {
            return Some(task);
        }
        self.next_to_execute()
    }

    /// `tx`'s execution read an estimate written by `blocking`. `true`: `tx` now waits for
    /// `blocking` and this task is over; `false`: `blocking` has finished meanwhile, so execute
    /// again.
    pub(super) fn add_dependency(&self, tx: usize, blocking: usize) -> bool {
        {
            let mut blocker = self.states[blocking].lock();
            if blocker.status == Status::Executed {
                return false;
            }
            // Under the blocker's lock, so its finish cannot resume `tx` before `tx` is parked.
            self.states[tx].lock().status = Status::Aborting;
            blocker.dependents.push(tx);
        }
        self.active_tasks.fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Makes `tx` ready for its next incarnation.
    fn set_ready(&self, tx: usize) {
        let mut state = self.states[tx].lock();
        assert_eq!(
            state.status,
            Status::Aborting,
            "only an aborted tx is resumed"
        );
        state.incarnation += 1;
        state.status = Status::ReadyToExecute;
    }

    /// Records that `tx`'s `incarnation` executed; returns its validation task when it can run
    /// right away.
    pub(super) fn finish_execution(
        &self,
        tx: usize,
        incarnation: usize,
        wrote_new_location: bool,
    ) -> Option<Task> {
        let dependents = {
            let mut state = self.states[tx].lock();
            assert_eq!(state.status, Status::Executing);
            state.status = Status::Executed;
            std::mem::take(&mut state.dependents)
        };
        if let Some(min) = dependents.iter().copied().min() {
            for dependent in dependents {
                self.set_ready(dependent);
            }
            self.decrease_execution_idx(min);
        }
        if self.validation_idx.load(Ordering::SeqCst) > tx {
            if !wrote_new_location {
                // Transactions after it already validated against the same locations.
                return Some(Task::Validate(tx, incarnation));
            }
            self.decrease_validation_idx(tx);
        }
        self.active_tasks.fetch_sub(1, Ordering::SeqCst);
        None
    }

    /// Aborts `tx`'s `incarnation` after a failed validation; `false` if another thread already
    /// did (or it was re-executed since).
    pub(super) fn try_validation_abort(&self, tx: usize, incarnation: usize) -> bool {
        let mut state = self.states[tx].lock();
        if state.incarnation == incarnation && state.status == Status::Executed {
            state.status = Status::Aborting;
            true
        } else {
            false
        }
    }

    /// Ends a validation task; after an abort, returns the re-execution when it can run right away.
    pub(super) fn finish_validation(&self, tx: usize, aborted: bool) -> Option<Task> {
        if aborted {
            self.set_ready(tx);
            self.decrease_validation_idx(tx + 1);
            if self.execution_idx.load(Ordering::SeqCst) > tx
                && let Some(incarnation) = self.try_incarnate(tx)
            {
                // The active task carries over to the re-execution.
                return Some(Task::Execute(tx, incarnation));
            }
        }
        self.active_tasks.fetch_sub(1, Ordering::SeqCst);
        None
    }
}

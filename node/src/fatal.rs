//! One fatal-error policy: a panic on any thread (a stage that cannot go on after a failed disk
//! write or a corrupt database, or a broken invariant) stops the whole process with
//! [`FATAL_EXIT_CODE`] and one clear log line, so that the supervisor (systemd's
//! `Restart=on-failure`) restarts it. Without this a panicking stage thread died alone and RPC
//! went on serving, and accepting transactions for, a pipeline that no longer moved.
//!
//! Exiting without unwinding the other threads loses nothing: every block commits atomically in
//! MDBX, and a restart resumes from the last committed one, as after `kill -9`.

/// Exit status of a node stopped by a fatal error (BSD's `EX_SOFTWARE`).
pub const FATAL_EXIT_CODE: i32 = 70;

/// Stops the node for a fatal error that is not a panic (`what` says which, `area` where).
pub fn stop(area: &str, what: &str) -> ! {
    tracing::error!(target: "node", area, error = what, "fatal error: stopping the node");
    std::process::exit(FATAL_EXIT_CODE);
}

/// Installs the policy: after the default hook has printed the panic, log it and exit.
pub fn exit_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let thread = std::thread::current();
        stop(thread.name().unwrap_or("unnamed thread"), &info.to_string());
    }));
}

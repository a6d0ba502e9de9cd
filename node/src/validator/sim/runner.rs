//! Running seeds: one (`KESTREL_SIM_SEED`, to replay a failure) or many, on every core, with
//! a summary of what the runs did; and the check that a seed replays identically.

use super::{Outcome, Sim, net::Blown, scenario::Scenario};
use std::sync::atomic::{AtomicU64, Ordering};

/// Seeds run by default (`KESTREL_SIM_SEEDS` for more).
const SEEDS_DEFAULT: u64 = 1_000;

/// A blown fuse is a crash the simulation asked for: no panic message.
fn quiet_fuses() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Blown>() {
                hook(info)
            }
        }))
    });
}

/// Runs one seed; a violation panics with the seed, the scenario and the replay command.
fn run_seed(seed: u64) -> Outcome {
    quiet_fuses();
    // `KESTREL_SIM_LOG=kestrel=info,node=info` (an EnvFilter) to follow a replayed seed.
    if let Ok(filter) = std::env::var("KESTREL_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .without_time()
            .with_ansi(false)
            .try_init();
    }
    let sc = Scenario::random(seed);
    match Sim::new(sc.clone()).run() {
        Ok(outcome) => outcome,
        Err(violation) => panic!(
            "simulation seed {seed} failed: {violation:?}\n  scenario: {sc:?}\n  replay: \
             KESTREL_SIM_SEED={seed} cargo test -p kestrel-node --release sim_"
        ),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn sim_seeded_drivers() {
    let seeds: Vec<u64> = match env_u64("KESTREL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("KESTREL_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT)).collect(),
    };
    let next = AtomicU64::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let started = std::time::Instant::now();
    let totals = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut total = Outcome::default();
                    // The longest recovery, and its seed (to replay it).
                    let mut slowest = (0, 0);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&seed) = seeds.get(i) else {
                            return (total, slowest);
                        };
                        // One failure stops the other workers too: its seed is the message.
                        let o = match std::panic::catch_unwind(|| run_seed(seed)) {
                            Ok(o) => o,
                            Err(e) => {
                                next.store(u64::MAX / 2, Ordering::Relaxed);
                                std::panic::resume_unwind(e)
                            }
                        };
                        total.height += o.height;
                        total.submitted += o.submitted;
                        total.included += o.included;
                        total.restarts += o.restarts;
                        total.mid_step += o.mid_step;
                        total.ordered_twice += o.ordered_twice;
                        total.events += o.events;
                        total.recovered_ms += o.recovered_ms;
                        slowest = slowest.max((o.recovered_ms, seed));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect::<Vec<_>>()
    });
    let secs = started.elapsed().as_secs_f64();
    let sum = |f: fn(&Outcome) -> u64| totals.iter().map(|(o, _)| f(o)).sum::<u64>();
    let (slowest_ms, slowest_seed) = totals.iter().map(|(_, s)| *s).max().unwrap_or_default();
    println!(
        "{} seeds in {secs:.1} s ({:.1} seeds/s): {} blocks finalized, {} of {} transactions \
         included ({} ordered twice, dropped at execution), {} restarts ({} crashed mid-step), \
         {} events; recovery after the faults: mean {} ms, longest {slowest_ms} ms (seed \
         {slowest_seed})",
        seeds.len(),
        seeds.len() as f64 / secs,
        sum(|o| o.height),
        sum(|o| o.included as u64),
        sum(|o| o.submitted as u64),
        sum(|o| o.ordered_twice as u64),
        sum(|o| o.restarts as u64),
        sum(|o| o.mid_step as u64),
        sum(|o| o.events),
        sum(|o| o.recovered_ms) / (seeds.len() as u64).max(1),
    );
}

/// The same seed gives the same run: the same blocks, results and number of events.
#[test]
fn sim_replays_a_seed_identically() {
    let faulty = |seed: &u64| {
        let sc = Scenario::random(*seed);
        sc.n > 1 && !sc.crashes.is_empty() && sc.partition.is_some() && sc.txs > 0
    };
    for seed in (0..).filter(faulty).take(3) {
        let (a, b) = (run_seed(seed), run_seed(seed));
        assert!(a.height > 0);
        assert_eq!((a.digest, a.events), (b.digest, b.events), "seed {seed}");
    }
}

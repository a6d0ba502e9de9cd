//! What goes wrong in one simulated run, drawn from its seed.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// What goes wrong in one run, drawn from the seed. Every fault stops at `heal_ms`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub n: usize,
    pub block_time_ms: u64,
    pub delay_ms: (u64, u64),
    pub drop_prob: f64,
    pub duplicate_prob: f64,
    pub heal_ms: u64,
    /// [start, end) and each validator's side.
    pub partition: Option<(u64, u64, Vec<bool>)>,
    /// (validator, crash at, restart at), both before `heal_ms`.
    pub crashes: Vec<(usize, u64, u64)>,
    /// Every validator crashes at once and restarts a moment later (a data centre's power, a
    /// bad release): what blocks in flight at that moment need of the datadirs.
    pub outage: Option<(u64, u64)>,
    /// Transactions submitted (before `heal_ms`), to a random validator each.
    pub txs: usize,
}

impl Scenario {
    pub fn random(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xd21e_5eed);
        let n = match rng.random_range(0..10) {
            0 | 1 => 1,
            2 => 7,
            _ => 4,
        };
        let heal_ms = rng.random_range(2_000..5_000);
        let delay_min = rng.random_range(1..20);
        let partition = (n > 1 && rng.random_bool(0.5)).then(|| {
            let start = rng.random_range(0..heal_ms / 2);
            let end = rng.random_range(start + 1..heal_ms);
            (start, end, (0..n).map(|_| rng.random_bool(0.5)).collect())
        });
        let crashes = (0..rng.random_range(0..=n.min(3)))
            .map(|_| {
                let at = rng.random_range(0..heal_ms - 500);
                (
                    rng.random_range(0..n),
                    at,
                    rng.random_range(at + 1..heal_ms),
                )
            })
            .collect();
        let outage = rng.random_bool(0.25).then(|| {
            let at = rng.random_range(200..heal_ms - 400);
            (at, at + rng.random_range(1..=300))
        });
        Scenario {
            seed,
            n,
            outage,
            block_time_ms: rng.random_range(100..=400),
            delay_ms: (delay_min, delay_min + rng.random_range(10..250)),
            drop_prob: rng.random_range(0.0..0.2),
            duplicate_prob: rng.random_range(0.0..0.1),
            heal_ms,
            partition,
            crashes,
            txs: rng.random_range(0..=30),
        }
    }
}

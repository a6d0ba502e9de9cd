//! Consensus orders blocks; it never executes them. This crate is a pure state machine in the
//! shape of monad-bft (`update(event) -> Vec<Command>`): no sockets, clocks, threads or disk.
//! Time and execution results come in as events; proposals and timers go out as commands, and a
//! driver carries them out. The single-validator instance here is what the dev chain runs; the
//! multi-validator BFT instance ([`bft`]) has its own events and commands, since it also speaks
//! to peers.

use std::collections::BTreeMap;

pub mod bft;
pub mod error;
#[cfg(test)]
mod sim;

/// Round of consensus. With one validator every round produces a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Round(pub u64);

impl Round {
    pub fn next(self) -> Round {
        Round(self.0 + 1)
    }
}

pub use kestrel_types::ExecutionResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The driver's clock, in milliseconds since the Unix epoch.
    Tick { now_ms: u64 },
    /// Execution finished a block.
    Executed(ExecutionResult),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Build and broadcast proposal `number` (the driver fills in the transactions). With one
    /// validator a proposal is final as soon as it is made.
    Propose {
        number: u64,
        round: Round,
        timestamp_ms: u64,
        delayed_result: Option<ExecutionResult>,
    },
    /// Wake the state machine with a `Tick` at this time.
    ScheduleTick { at_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub block_time_ms: u64,
    /// D: proposal N carries the execution result of block N − D.
    pub execution_delay: u64,
}

/// A one-validator chain: a proposal every `block_time_ms`, each final on creation.
#[derive(Debug)]
pub struct SingleValidator {
    config: Config,
    next_number: u64,
    round: Round,
    last_proposal_ms: Option<u64>,
    /// Execution results not yet carried, by block number.
    results: BTreeMap<u64, ExecutionResult>,
}

impl SingleValidator {
    /// `head` is the last block already ordered (after a restart: the last committed block).
    pub fn new(config: Config, head: u64) -> Self {
        assert!(config.block_time_ms > 0, "block time must be positive");
        Self {
            config,
            next_number: head + 1,
            round: Round(head),
            last_proposal_ms: None,
            results: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::Executed(result) => {
                self.results.insert(result.number, result);
                Vec::new()
            }
            Event::Tick { now_ms } => {
                let due = self
                    .last_proposal_ms
                    .map_or(now_ms, |t| t + self.config.block_time_ms);
                if now_ms < due {
                    return vec![Command::ScheduleTick { at_ms: due }];
                }
                // Timestamps never go backwards, even if the wall clock does.
                let timestamp_ms = self.last_proposal_ms.map_or(now_ms, |t| now_ms.max(t + 1));
                let number = self.next_number;
                self.round = Round(self.round.0 + 1);
                self.next_number += 1;
                self.last_proposal_ms = Some(timestamp_ms);
                let delayed = number.checked_sub(self.config.execution_delay);
                let delayed_result = delayed.and_then(|n| self.results.remove(&n));
                // Results older than the one carried can never be carried any more.
                if let Some(n) = delayed {
                    self.results.retain(|k, _| *k > n);
                }
                vec![
                    Command::Propose {
                        number,
                        round: self.round,
                        timestamp_ms,
                        delayed_result,
                    },
                    Command::ScheduleTick {
                        at_ms: timestamp_ms + self.config.block_time_ms,
                    },
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::B256;

    fn result(number: u64) -> ExecutionResult {
        ExecutionResult {
            number,
            block_hash: B256::with_last_byte(number as u8),
            state_root: B256::ZERO,
            receipts_root: B256::ZERO,
        }
    }

    #[test]
    fn proposes_every_block_time_and_carries_delayed_results() {
        let mut sm = SingleValidator::new(
            Config {
                block_time_ms: 500,
                execution_delay: 3,
            },
            0,
        );
        let mut proposals = Vec::new();
        let mut now = 1_000;
        for _ in 0..8 {
            for cmd in sm.update(Event::Tick { now_ms: now }) {
                if let Command::Propose {
                    number,
                    delayed_result,
                    timestamp_ms,
                    ..
                } = cmd
                {
                    proposals.push((number, delayed_result.map(|r| r.number), timestamp_ms));
                    sm.update(Event::Executed(result(number)));
                }
            }
            now += 250;
        }
        // Ticks every 250 ms with a 500 ms block time: one proposal per two ticks.
        assert_eq!(
            proposals.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            proposals.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![None, None, None, Some(1)]
        );
        assert!(proposals.windows(2).all(|w| w[1].2 - w[0].2 == 500));
    }

    #[test]
    fn restarts_after_head_and_schedules_next_tick() {
        let mut sm = SingleValidator::new(
            Config {
                block_time_ms: 100,
                execution_delay: 3,
            },
            41,
        );
        let cmds = sm.update(Event::Tick { now_ms: 5 });
        assert!(matches!(cmds[0], Command::Propose { number: 42, .. }));
        assert_eq!(cmds[1], Command::ScheduleTick { at_ms: 105 });
        assert_eq!(
            sm.update(Event::Tick { now_ms: 50 }),
            vec![Command::ScheduleTick { at_ms: 105 }]
        );
    }

    #[test]
    fn timestamps_are_monotonic_when_the_clock_steps_back() {
        let mut sm = SingleValidator::new(
            Config {
                block_time_ms: 1,
                execution_delay: 3,
            },
            0,
        );
        let ts = |cmds: Vec<Command>| match cmds[0] {
            Command::Propose { timestamp_ms, .. } => timestamp_ms,
            _ => panic!("expected a proposal"),
        };
        let a = ts(sm.update(Event::Tick { now_ms: 1_000 }));
        let b = ts(sm.update(Event::Tick { now_ms: 2_000 }));
        let c = ts(sm.update(Event::Tick { now_ms: 2_001 }));
        assert!(a < b && b < c);
    }
}

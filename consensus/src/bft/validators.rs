//! Validator identities, the stake-weighted validator set, quorums and the leader schedule.

use crate::Round;
use crate::error::ValidatorSetError;
use alloy_primitives::B256;
use secp256k1::{Message as SecpMessage, PublicKey, SECP256K1, SecretKey, ecdsa};
use std::collections::HashSet;

/// Most validators a set may hold: indices travel as `u16`, and every certificate check is linear
/// in the set size.
pub const VALIDATORS_MAX: usize = 1024;

/// Longest leader schedule; larger stake ratios are approximated to fit.
const SCHEDULE_LEN_MAX: u64 = 4096;

/// A validator's identity: its 33-byte compressed secp256k1 public key. On the wire validators
/// are named by their position in the validator set ([`ValidatorIndex`]), which is shorter and
/// fixed for the life of the set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValidatorId(pub [u8; 33]);

impl std::fmt::Debug for ValidatorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValidatorId(0x")?;
        for b in &self.0[..5] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Position of a validator in the [`ValidatorSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidatorIndex(pub u16);

/// A compact (r, s) ECDSA signature over a 32-byte digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A validator's signing key. It signs every proposal, vote and timeout this node sends.
#[derive(Clone)]
pub struct ValidatorKey {
    secret: SecretKey,
    id: ValidatorId,
}

impl ValidatorKey {
    pub fn new(secret: SecretKey) -> Self {
        let id = ValidatorId(PublicKey::from_secret_key_global(&secret).serialize());
        Self { secret, id }
    }

    pub fn id(&self) -> ValidatorId {
        self.id
    }

    pub(crate) fn sign(&self, digest: B256) -> Signature {
        let msg = SecpMessage::from_digest(digest.0);
        Signature(SECP256K1.sign_ecdsa(&msg, &self.secret).serialize_compact())
    }
}

impl std::fmt::Debug for ValidatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatorKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The validators of an epoch with their stakes. Quorum is more than two thirds of the stake
/// (2f+1 of 3f+1 with equal stakes).
#[derive(Debug, Clone)]
pub struct ValidatorSet {
    ids: Vec<ValidatorId>,
    keys: Vec<PublicKey>,
    stakes: Vec<u64>,
    total_stake: u64,
    pub(crate) quorum_stake: u64,
    schedule: Vec<ValidatorIndex>,
}

impl ValidatorSet {
    pub fn new(members: Vec<(ValidatorId, u64)>) -> Result<Self, ValidatorSetError> {
        if members.is_empty() {
            return Err(ValidatorSetError::Empty);
        }
        if members.len() > VALIDATORS_MAX {
            return Err(ValidatorSetError::TooMany(members.len()));
        }
        let mut seen = HashSet::new();
        let mut keys = Vec::with_capacity(members.len());
        let mut total: u64 = 0;
        for (i, (id, stake)) in members.iter().enumerate() {
            if *stake == 0 {
                return Err(ValidatorSetError::ZeroStake(i));
            }
            if !seen.insert(*id) {
                return Err(ValidatorSetError::Duplicate(i));
            }
            keys.push(PublicKey::from_slice(&id.0).map_err(|_| ValidatorSetError::BadKey(i))?);
            total = total
                .checked_add(*stake)
                .ok_or(ValidatorSetError::StakeOverflow)?;
        }
        let stakes: Vec<u64> = members.iter().map(|m| m.1).collect();
        let quorum_stake = (u128::from(total) * 2 / 3) as u64 + 1;
        Ok(Self {
            ids: members.iter().map(|m| m.0).collect(),
            keys,
            schedule: leader_schedule(&stakes, total),
            stakes,
            total_stake: total,
            quorum_stake,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn index_of(&self, id: &ValidatorId) -> Option<ValidatorIndex> {
        self.ids
            .iter()
            .position(|x| x == id)
            .map(|i| ValidatorIndex(i as u16))
    }

    pub fn id(&self, index: ValidatorIndex) -> Option<ValidatorId> {
        self.ids.get(usize::from(index.0)).copied()
    }

    /// Stake of `index`, zero for an index outside the set.
    pub fn stake(&self, index: ValidatorIndex) -> u64 {
        self.stakes.get(usize::from(index.0)).copied().unwrap_or(0)
    }

    pub fn total_stake(&self) -> u64 {
        self.total_stake
    }

    /// Smallest stake that is a quorum: more than two thirds of the total.
    pub fn quorum_stake(&self) -> u64 {
        self.quorum_stake
    }

    /// Smallest stake that must include an honest validator: more than a third (f+1).
    pub fn validity_stake(&self) -> u64 {
        self.total_stake / 3 + 1
    }

    /// Leader of `round`: stake-weighted round robin over a fixed schedule.
    pub fn leader(&self, round: Round) -> ValidatorIndex {
        self.schedule[(round.0 % self.schedule.len() as u64) as usize]
    }

    /// Checks `signature` by `signer` over `digest`.
    pub(crate) fn verify(
        &self,
        signer: ValidatorIndex,
        digest: B256,
        signature: &Signature,
    ) -> bool {
        let Some(key) = self.keys.get(usize::from(signer.0)) else {
            return false;
        };
        let Ok(sig) = ecdsa::Signature::from_compact(&signature.0) else {
            return false;
        };
        SECP256K1
            .verify_ecdsa(&SecpMessage::from_digest(digest.0), &sig, key)
            .is_ok()
    }
}

/// Smooth weighted round robin (nginx's): each validator leads in proportion to its stake, and
/// its turns are spread out rather than consecutive, so one crashed leader costs one timeout at
/// a time. Equal stakes give plain round robin 0, 1, 2, ...
fn leader_schedule(stakes: &[u64], total: u64) -> Vec<ValidatorIndex> {
    let g = stakes.iter().copied().fold(0, gcd);
    let mut weights: Vec<u64> = stakes.iter().map(|s| s / g).collect();
    if total / g > SCHEDULE_LEN_MAX {
        weights = stakes
            .iter()
            .map(|s| {
                ((u128::from(*s) * u128::from(SCHEDULE_LEN_MAX) / u128::from(total)) as u64).max(1)
            })
            .collect();
    }
    let len: u64 = weights.iter().sum();
    let mut current = vec![0i128; weights.len()];
    (0..len)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += i128::from(*w);
            }
            // Ties go to the lowest index: max_by_key keeps the last maximum, so scan reversed.
            let (pick, _) = current
                .iter()
                .enumerate()
                .rev()
                .max_by_key(|(_, c)| **c)
                .expect("non-empty set");
            current[pick] -= i128::from(len);
            ValidatorIndex(pick as u16)
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> ValidatorKey {
        let mut bytes = [0u8; 32];
        bytes[24..].copy_from_slice(&(i + 1).to_be_bytes());
        ValidatorKey::new(SecretKey::from_byte_array(&bytes).unwrap())
    }

    fn set(stakes: &[u64]) -> ValidatorSet {
        ValidatorSet::new(
            stakes
                .iter()
                .enumerate()
                .map(|(i, s)| (key(i as u64).id(), *s))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn quorum_is_more_than_two_thirds() {
        assert_eq!(set(&[1; 4]).quorum_stake(), 3);
        assert_eq!(set(&[1; 4]).validity_stake(), 2);
        assert_eq!(set(&[1; 7]).quorum_stake(), 5);
        assert_eq!(set(&[1; 3]).quorum_stake(), 3);
        assert_eq!(set(&[10, 10, 10, 70]).quorum_stake(), 67);
    }

    #[test]
    fn equal_stakes_rotate_round_robin() {
        let s = set(&[5; 4]);
        let leaders: Vec<u16> = (0..8).map(|r| s.leader(Round(r)).0).collect();
        assert_eq!(leaders, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn leadership_is_proportional_to_stake_and_spread_out() {
        let s = set(&[3, 1, 1, 1]);
        let leaders: Vec<u16> = (0..6).map(|r| s.leader(Round(r)).0).collect();
        assert_eq!(leaders.iter().filter(|l| **l == 0).count(), 3);
        // Validator 0 never leads twice in a row within the cycle.
        assert!(leaders.windows(2).all(|w| w[0] != w[1]));
        // Huge stakes are approximated within the schedule bound, never dropping a validator.
        let big = set(&[u64::MAX / 4, 1, 1, 1]);
        let turns: HashSet<u16> = (0..SCHEDULE_LEN_MAX + 8)
            .map(|r| big.leader(Round(r)).0)
            .collect();
        assert_eq!(turns.len(), 4);
    }

    #[test]
    fn rejects_bad_sets() {
        assert_eq!(
            ValidatorSet::new(vec![]).unwrap_err(),
            ValidatorSetError::Empty
        );
        let id = key(0).id();
        assert_eq!(
            ValidatorSet::new(vec![(id, 1), (id, 1)]).unwrap_err(),
            ValidatorSetError::Duplicate(1)
        );
        assert_eq!(
            ValidatorSet::new(vec![(id, 0)]).unwrap_err(),
            ValidatorSetError::ZeroStake(0)
        );
        assert_eq!(
            ValidatorSet::new(vec![(ValidatorId([7; 33]), 1)]).unwrap_err(),
            ValidatorSetError::BadKey(0)
        );
        assert_eq!(
            ValidatorSet::new(vec![(id, u64::MAX), (key(1).id(), 1)]).unwrap_err(),
            ValidatorSetError::StakeOverflow
        );
    }

    #[test]
    fn signatures_bind_signer_and_digest() {
        let s = set(&[1; 4]);
        let d = B256::repeat_byte(9);
        let sig = key(1).sign(d);
        assert!(s.verify(ValidatorIndex(1), d, &sig));
        assert!(!s.verify(ValidatorIndex(2), d, &sig));
        assert!(!s.verify(ValidatorIndex(1), B256::repeat_byte(8), &sig));
        assert!(!s.verify(ValidatorIndex(9), d, &sig));
    }
}

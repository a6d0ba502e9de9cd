//! Pre-authentication slots: what an accepted connection holds from accept until its handshake
//! ends (authenticated, failed or timed out).
//!
//! Anyone can open a TCP connection, and a connection's key is proven only at the end of the
//! handshake, so the slots are counted by what TCP itself vouches for: the source address. Two
//! pools:
//!
//! - **General**: at most `total_max` connections in all, at most `per_ip_max` from one address
//!   (an IPv4 address, or an IPv6 /64: one host usually holds a whole /64). One address cannot
//!   take more than its share, so a single host no longer locks out everyone else.
//! - **Reserved**: [`RESERVED_PER_VALIDATOR`] slots for each configured validator that dials us
//!   (a lower key), counted on the address it is configured at, outside the total. An attacker
//!   with many addresses can fill the general pool but cannot take these: it would have to
//!   connect from a validator's address, which a TCP handshake does not let it fake. When an
//!   address's reserved slots are taken, its next connection competes in the general pool.
//!
//! Single-threaded (the runtime's thread): `Rc`/`RefCell`, no locks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

/// Reserved slots per validator that dials us. It has one dial in flight at a time; the second
/// covers its previous attempt when we have not yet seen that one close (the peer gave up on its
/// side, e.g. after a partition, and we wait for our handshake timeout).
pub const RESERVED_PER_VALIDATOR: usize = 2;

/// The source address as the limits count it: IPv4 (also IPv4-mapped IPv6) one by one, IPv6 by
/// its /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IpGroup {
    V4([u8; 4]),
    V6Prefix64([u8; 8]),
}

impl From<IpAddr> for IpGroup {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpGroup::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let octets = v6.octets();
                IpGroup::V6Prefix64(octets[..8].try_into().expect("16 bytes"))
            }
        }
    }
}

/// Why a connection was refused a slot (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address already holds `per_ip_max` general slots.
    PerIp,
    /// The general pool is full.
    Total,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::PerIp => "per_ip",
            Refused::Total => "total",
        }
    }
}

/// Which pool a slot came from (the gauge label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    General,
    Reserved,
}

impl Pool {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Pool::General => "general",
            Pool::Reserved => "reserved",
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    general: usize,
    reserved: usize,
}

#[derive(Debug)]
struct Inner {
    total_max: usize,
    per_ip_max: usize,
    /// Reserved slots of each address that validators dial us from.
    reserve: HashMap<IpGroup, usize>,
    /// Slots held, by address; an entry is removed when it holds none.
    held: HashMap<IpGroup, Held>,
    general: usize,
    reserved: usize,
}

impl Inner {
    /// The invariants every mutation keeps: the counts add up and stay within their bounds. On in
    /// release builds too: it walks at most the slots held (the general bound plus the reserve),
    /// once per admitted connection, never for a refused one.
    fn assert_invariants(&self) {
        let general: usize = self.held.values().map(|h| h.general).sum();
        let reserved: usize = self.held.values().map(|h| h.reserved).sum();
        assert_eq!(general, self.general);
        assert_eq!(reserved, self.reserved);
        assert!(self.general <= self.total_max);
        for (group, held) in &self.held {
            assert!(held.general + held.reserved > 0, "empty entry kept");
            assert!(held.general <= self.per_ip_max);
            assert!(held.reserved <= self.reserve.get(group).copied().unwrap_or(0));
        }
    }
}

/// The slot table. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub(crate) struct PreAuthSlots(Rc<RefCell<Inner>>);

impl PreAuthSlots {
    /// `validator_ips`: the configured address of each validator that dials us, one entry per
    /// validator (several validators on one host add up).
    pub(crate) fn new(
        total_max: usize,
        per_ip_max: usize,
        validator_ips: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        let mut reserve = HashMap::new();
        for ip in validator_ips {
            *reserve.entry(IpGroup::from(ip)).or_default() += RESERVED_PER_VALIDATOR;
        }
        Self(Rc::new(RefCell::new(Inner {
            total_max,
            per_ip_max,
            reserve,
            held: HashMap::new(),
            general: 0,
            reserved: 0,
        })))
    }

    /// A slot for a connection from `ip`, held until the returned guard is dropped: a reserved one
    /// if its address has one free, else a general one within the per-IP and total bounds.
    pub(crate) fn acquire(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let group = IpGroup::from(ip);
        let mut inner = self.0.borrow_mut();
        let reserve = inner.reserve.get(&group).copied().unwrap_or(0);
        let (held_general, held_reserved) = inner
            .held
            .get(&group)
            .map_or((0, 0), |h| (h.general, h.reserved));
        let pool = if held_reserved < reserve {
            Pool::Reserved
        } else if held_general >= inner.per_ip_max {
            return Err(Refused::PerIp);
        } else if inner.general >= inner.total_max {
            return Err(Refused::Total);
        } else {
            Pool::General
        };
        let held = inner.held.entry(group).or_default();
        match pool {
            Pool::General => {
                held.general += 1;
                inner.general += 1;
            }
            Pool::Reserved => {
                held.reserved += 1;
                inner.reserved += 1;
            }
        }
        inner.assert_invariants();
        Ok(Slot {
            slots: self.clone(),
            group,
            pool,
        })
    }

    /// Slots held in `pool`.
    pub(crate) fn held(&self, pool: Pool) -> usize {
        let inner = self.0.borrow();
        match pool {
            Pool::General => inner.general,
            Pool::Reserved => inner.reserved,
        }
    }

    fn release(&self, group: IpGroup, pool: Pool) {
        let mut inner = self.0.borrow_mut();
        let held = inner.held.get_mut(&group).expect("a slot is held");
        let emptied = match pool {
            Pool::General => {
                held.general -= 1;
                held.general + held.reserved == 0
            }
            Pool::Reserved => {
                held.reserved -= 1;
                held.general + held.reserved == 0
            }
        };
        if emptied {
            inner.held.remove(&group);
        }
        match pool {
            Pool::General => inner.general -= 1,
            Pool::Reserved => inner.reserved -= 1,
        }
        inner.assert_invariants();
    }
}

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: PreAuthSlots,
    group: IpGroup,
    pool: Pool,
}

impl Slot {
    pub(crate) fn pool(&self) -> Pool {
        self.pool
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.group, self.pool);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    /// A few lines of reference: the slots held, as a list.
    #[derive(Default)]
    struct Model {
        held: Vec<(IpAddr, Pool)>,
    }

    impl Model {
        fn count(&self, ip: Option<IpAddr>, pool: Pool) -> usize {
            self.held
                .iter()
                .filter(|(i, p)| *p == pool && ip.is_none_or(|ip| *i == ip))
                .count()
        }
    }

    proptest! {
        /// Random acquires and releases over 6 addresses (two of them validators', one with two
        /// validators) agree with the model: a reserved slot whenever the address has one free,
        /// else a general one within the per-address and total bounds, refused naming the bound
        /// that was reached; everything released leaves nothing held.
        #[test]
        fn slots_agree_with_a_model(
            ops in proptest::collection::vec((0u8..6, any::<bool>(), any::<prop::sample::Index>()), 1..300),
            total_max in 1usize..8,
            per_ip_max in 1usize..4,
        ) {
            let validators = [v4(0), v4(1), v4(1)];
            let reserve_of = |ip: IpAddr| {
                validators.iter().filter(|v| **v == ip).count() * RESERVED_PER_VALIDATOR
            };
            let slots = PreAuthSlots::new(total_max, per_ip_max, validators);
            let mut model = Model::default();
            let mut guards: Vec<Slot> = Vec::new();
            for (addr, release, index) in ops {
                if release && !guards.is_empty() {
                    let i = index.index(guards.len());
                    let slot = guards.swap_remove(i);
                    let (ip, pool) = model.held.swap_remove(i);
                    prop_assert_eq!(slot.pool(), pool);
                    prop_assert_eq!(IpGroup::from(ip), slot.group);
                    continue;
                }
                let ip = v4(addr);
                let expected = if model.count(Some(ip), Pool::Reserved) < reserve_of(ip) {
                    Ok(Pool::Reserved)
                } else if model.count(Some(ip), Pool::General) >= per_ip_max {
                    Err(Refused::PerIp)
                } else if model.count(None, Pool::General) >= total_max {
                    Err(Refused::Total)
                } else {
                    Ok(Pool::General)
                };
                let got = slots.acquire(ip);
                prop_assert_eq!(got.as_ref().map(Slot::pool).map_err(|e| *e), expected);
                if let Ok(slot) = got {
                    model.held.push((ip, slot.pool()));
                    guards.push(slot);
                }
                for pool in [Pool::General, Pool::Reserved] {
                    prop_assert_eq!(slots.held(pool), model.count(None, pool));
                }
            }
            drop(guards);
            prop_assert_eq!(slots.held(Pool::General), 0);
            prop_assert_eq!(slots.held(Pool::Reserved), 0);
            prop_assert!(slots.0.borrow().held.is_empty());
        }
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let slots = PreAuthSlots::new(8, 3, []);
        let held: Vec<_> = (0..3).map(|_| slots.acquire(v4(1)).unwrap()).collect();
        assert_eq!(slots.acquire(v4(1)).unwrap_err(), Refused::PerIp);
        // Others still get in.
        let other = slots.acquire(v4(2)).unwrap();
        assert_eq!(other.pool(), Pool::General);
        drop(held);
        assert_eq!(slots.held(Pool::General), 1);
        assert!(slots.acquire(v4(1)).is_ok());
    }

    #[test]
    fn many_addresses_fill_the_total_but_not_a_validators_reserve() {
        let validator = v4(100);
        // Two validators on one host: four reserved slots there.
        let slots = PreAuthSlots::new(4, 2, [validator, validator]);
        let _flood: Vec<_> = (1..=4).map(|i| slots.acquire(v4(i)).unwrap()).collect();
        assert_eq!(slots.acquire(v4(5)).unwrap_err(), Refused::Total);
        let reserved: Vec<_> = (0..2 * RESERVED_PER_VALIDATOR)
            .map(|_| slots.acquire(validator).unwrap())
            .collect();
        assert!(reserved.iter().all(|s| s.pool() == Pool::Reserved));
        assert_eq!(slots.held(Pool::Reserved), 4);
        // Past its reserve the validator's address competes in the (full) general pool.
        assert_eq!(slots.acquire(validator).unwrap_err(), Refused::Total);
    }

    #[test]
    fn a_reserve_spills_into_the_general_pool_within_the_per_ip_bound() {
        let validator = v4(100);
        let slots = PreAuthSlots::new(10, 1, [validator]);
        let _reserved: Vec<_> = (0..RESERVED_PER_VALIDATOR)
            .map(|_| slots.acquire(validator).unwrap())
            .collect();
        let spill = slots.acquire(validator).unwrap();
        assert_eq!(spill.pool(), Pool::General);
        assert_eq!(slots.acquire(validator).unwrap_err(), Refused::PerIp);
        drop(spill);
        assert_eq!(slots.held(Pool::General), 0);
    }

    #[test]
    fn ipv6_counts_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        let slots = PreAuthSlots::new(10, 1, []);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(b).unwrap_err(), Refused::PerIp, "same /64");
        let _c = slots.acquire(c).unwrap();
        let _v4 = slots.acquire(v4(7)).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(slots.acquire(mapped).unwrap_err(), Refused::PerIp);
    }
}

//! The residency table: for every shard of the swap store, where its newest bytes are besides
//! the home copy on disk; for every parameter group, whether the device holds it. Every change
//! goes through one function that asserts the transition is legal, so a bookkeeping slip is a
//! panic at the place it happens, not a silent read of stale bytes.
//!
//! ```text
//!  Home ──read──► Reading ──done──► InHand ──drop──► Home
//!   │                                  │
//!   └──write──► Held ──submit──► Writing ──done──► Home
//!                 │                 │
//!                 └──── take ───────┴──► InHand ──write──► Held / Writing
//! ```
//! `InHand`: the caller holds the pool buffer (an optimizer unit being updated, a parameter
//! shard being uploaded). A shard in `Held` or `Writing` is served from its pool buffer: never
//! written, waited on and read back.

/// Where a store shard's newest version is, besides its home slot on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Only on disk.
    Home,
    /// A read into pool buffers is in flight.
    Reading,
    /// The caller holds it in pool buffers.
    InHand,
    /// A newer version waits in the pool; its write is not submitted yet.
    Held,
    /// A newer version's write is in flight from its pool buffers.
    Writing,
}

fn allowed(from: ShardState, to: ShardState) -> bool {
    use ShardState::*;
    matches!(
        (from, to),
        (Home, Reading)
            | (Reading, Home) // a prefetch given up
            | (Reading, InHand)
            | (InHand, Home)
            | (InHand, Held)
            | (InHand, Writing)
            | (Home, Held)
            | (Home, Writing)
            | (Held, Writing)
            | (Held, InHand)
            | (Writing, Home)
            | (Writing, InHand)
    )
}

/// One state per store shard (indexed by the store's shard id).
#[derive(Debug, Default)]
pub struct ShardTable {
    states: Vec<ShardState>,
}

impl ShardTable {
    /// `n` shards, all at home.
    pub fn new(n: usize) -> Self {
        ShardTable {
            states: vec![ShardState::Home; n],
        }
    }

    /// The state of shard `id`.
    pub fn get(&self, id: usize) -> ShardState {
        self.states[id]
    }

    /// Moves shard `id` to `to`; an illegal transition is a programmer error (panics naming
    /// both states).
    pub fn set(&mut self, id: usize, to: ShardState) {
        let from = self.states[id];
        assert!(
            allowed(from, to),
            "residency: shard {id} cannot go from {from:?} to {to:?}"
        );
        self.states[id] = to;
    }

    /// How many shards are in `state`.
    pub fn count(&self, state: ShardState) -> usize {
        self.states.iter().filter(|&&s| s == state).count()
    }
}

/// Where a group's parameters are with respect to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDevice {
    /// Not on the device.
    Off,
    /// Fetched and not yet released.
    InUse,
    /// Released but kept: used again within `stage3_max_reuse_distance`, or persistent
    /// (small, or the placement keeps parameters on the device).
    Kept,
}

/// The device state of every parameter group, with asserted transitions.
#[derive(Debug)]
pub struct DeviceTable {
    states: Vec<OnDevice>,
}

impl DeviceTable {
    /// `n` groups, none on the device.
    pub fn new(n: usize) -> Self {
        DeviceTable {
            states: vec![OnDevice::Off; n],
        }
    }

    /// The state of group `gi`.
    pub fn get(&self, gi: usize) -> OnDevice {
        self.states[gi]
    }

    /// Moves group `gi` to `to`. Off→Kept is illegal (a group is used before it is kept), and
    /// so is any move to the state it is in, except InUse→InUse (fetched by two stages).
    pub fn set(&mut self, gi: usize, to: OnDevice) {
        use OnDevice::*;
        let from = self.states[gi];
        let ok = matches!(
            (from, to),
            (Off, InUse)
                | (Kept, InUse)
                | (InUse, InUse)
                | (InUse, Kept)
                | (InUse, Off)
                | (Kept, Off)
        );
        assert!(
            ok,
            "residency: group {gi} cannot go from {from:?} to {to:?} on the device"
        );
        self.states[gi] = to;
    }

    /// Groups in `state`.
    pub fn in_state(&self, state: OnDevice) -> impl Iterator<Item = usize> + '_ {
        (0..self.states.len()).filter(move |&g| self.states[g] == state)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// True when there are no groups.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_paths_pass_and_a_slip_panics() {
        let mut t = ShardTable::new(2);
        for s in [
            ShardState::Reading,
            ShardState::InHand,
            ShardState::Held,
            ShardState::InHand,
            ShardState::Writing,
            ShardState::Home,
        ] {
            t.set(0, s);
        }
        assert_eq!(t.count(ShardState::Home), 2);
        let r = std::panic::catch_unwind(move || {
            let mut t = t;
            t.set(1, ShardState::InHand); // never read
        });
        assert!(r.is_err());
        let mut d = DeviceTable::new(1);
        d.set(0, OnDevice::InUse);
        d.set(0, OnDevice::Kept);
        d.set(0, OnDevice::Off);
        assert!(std::panic::catch_unwind(move || d.set(0, OnDevice::Kept)).is_err());
    }
}

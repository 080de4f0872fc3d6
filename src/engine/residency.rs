//! The access trace that drives prefetching (the device state of each group is in the tiers'
//! residency table, `crate::tiers::residency`).
//!
//! The trace is the order in which one micro-batch's forward and backward fetch groups. The
//! first pass of each phase (training, evaluation) records it; later passes follow it and
//! prefetch what comes next. A fetch that does not match the recorded order stops following
//! for the rest of the pass and the pass is recorded anew: a changed model path costs one pass
//! of prefetching, never an error.

/// Which loop is running; each has its own trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Train = 0,
    Eval = 1,
}

/// The recorded access order of each phase and where the current pass is in it.
#[derive(Debug, Default)]
pub struct Trace {
    recorded: [Option<Vec<usize>>; 2],
    current: Vec<usize>,
    phase: usize,
    pos: usize,
    following: bool,
    /// Passes that left their recorded order.
    pub deviations: u64,
}

impl Trace {
    /// Starts a pass of `phase`.
    pub fn begin(&mut self, phase: Phase) {
        self.phase = phase as usize;
        self.current.clear();
        self.pos = 0;
        self.following = self.recorded[self.phase].is_some();
    }

    /// Notes a fetch of group `gi`.
    pub fn record(&mut self, gi: usize) {
        self.current.push(gi);
        if !self.following {
            return;
        }
        let plan = self.recorded[self.phase].as_deref().unwrap_or(&[]);
        if plan.get(self.pos) == Some(&gi) {
            self.pos += 1;
        } else {
            self.following = false;
            self.deviations += 1;
            tracing::debug!(
                "access trace: fetch of group {gi} left the recorded order; re-recording"
            );
        }
    }

    /// The fetches still to come in this pass (empty when not following a recording).
    pub fn upcoming(&self) -> &[usize] {
        match (&self.recorded[self.phase], self.following) {
            (Some(plan), true) => &plan[self.pos.min(plan.len())..],
            _ => &[],
        }
    }

    /// Elements fetched before group `gi` is fetched again in this pass, by the recording;
    /// `None` when it is not used again (or nothing is recorded).
    pub fn reuse_distance(&self, gi: usize, numel: impl Fn(usize) -> usize) -> Option<u64> {
        let mut d = 0u64;
        for &g in self.upcoming() {
            if g == gi {
                return Some(d);
            }
            d += numel(g) as u64;
        }
        None
    }

    /// Ends the pass: its order becomes the recording the next pass follows.
    pub fn end(&mut self) {
        let done = std::mem::take(&mut self.current);
        self.recorded[self.phase] = Some(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_pass_is_followed_and_a_deviation_rerecords() {
        let mut t = Trace::default();
        t.begin(Phase::Train);
        assert!(
            t.upcoming().is_empty(),
            "nothing to follow on the first pass"
        );
        for g in [0, 1, 2, 1, 0] {
            t.record(g);
        }
        t.end();
        t.begin(Phase::Train);
        t.record(0);
        assert_eq!(t.upcoming(), &[1, 2, 1, 0]);
        assert_eq!(t.reuse_distance(0, |_| 10), Some(30));
        assert_eq!(t.reuse_distance(2, |_| 10), Some(10));
        t.record(2); // deviation
        assert!(t.upcoming().is_empty());
        assert_eq!(t.deviations, 1);
        t.record(1);
        t.end();
        t.begin(Phase::Train);
        assert_eq!(
            t.upcoming(),
            &[0, 2, 1],
            "the deviating pass is the new recording"
        );
        t.begin(Phase::Eval);
        assert!(t.upcoming().is_empty(), "phases keep separate traces");
    }
}

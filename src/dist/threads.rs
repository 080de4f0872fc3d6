//! Ranks that are threads of one process, on the CPU device: [`ThreadGroup::new`] gives one
//! [`ThreadComm`] per rank, each moved to its own thread.
//!
//! A collective is two meetings: every rank posts its contribution (a copy) in its slot and
//! waits for all; each then reads the slots in rank order and waits again, so no slot is
//! overwritten before everyone has read it. A meeting that a rank never reaches ends, for the
//! others, after the group's timeout with an error naming the missing ranks; a rank whose
//! comm is dropped (its thread returned, failed or panicked) makes every waiting and later
//! collective of the group fail at once, naming it — never a hang.

use super::{check_extent, Collective, DistError};
use crate::device::{CpuDevice, DeviceBuffer};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a rank waits for the others at a collective by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

struct State {
    /// Ranks at the current meeting.
    arrived: Vec<bool>,
    /// Meetings completed so far.
    generation: u64,
    /// Set once a rank leaves or a meeting times out: every collective fails from then on.
    aborted: Option<String>,
    /// Each rank's contribution to the current collective.
    slots: Vec<Vec<f32>>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// A group of `world` thread ranks.
pub struct ThreadGroup;

impl ThreadGroup {
    /// One comm per rank (index = rank), meetings timing out after [`DEFAULT_TIMEOUT`].
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Vec<ThreadComm> {
        Self::with_timeout(world, DEFAULT_TIMEOUT)
    }

    /// One comm per rank, meetings timing out after `timeout`.
    pub fn with_timeout(world: usize, timeout: Duration) -> Vec<ThreadComm> {
        let world = world.max(1);
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State {
                arrived: vec![false; world],
                generation: 0,
                aborted: None,
                slots: vec![Vec::new(); world],
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One thread rank's end of a [`ThreadGroup`].
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        let mut st = self.lock();
        if st.aborted.is_none() {
            st.aborted = Some(format!(
                "rank {} left the group (its run ended or failed); the collectives of the \
                 others cannot complete",
                self.rank
            ));
        }
        drop(st);
        self.shared.cv.notify_all();
    }
}

impl ThreadComm {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left the state consistent (every
        // write under it is a single assignment), so the poison is ignored.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn aborted(&self, why: &str) -> DistError {
        DistError::Aborted {
            rank: self.rank,
            why: why.to_string(),
        }
    }

    /// Waits until every rank has reached this meeting.
    fn meet<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        what: &str,
    ) -> Result<MutexGuard<'a, State>, DistError> {
        if let Some(why) = &st.aborted {
            return Err(self.aborted(why));
        }
        let generation = st.generation;
        st.arrived[self.rank] = true;
        if st.arrived.iter().all(|&a| a) {
            st.arrived.iter_mut().for_each(|a| *a = false);
            st.generation += 1;
            self.shared.cv.notify_all();
            return Ok(st);
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> =
                    (0..self.shared.world).filter(|&r| !st.arrived[r]).collect();
                let why = format!(
                    "{what}: ranks {missing:?} did not arrive within {:.0} s",
                    self.shared.timeout.as_secs_f64()
                );
                st.aborted = Some(why.clone());
                self.shared.cv.notify_all();
                return Err(DistError::Timeout {
                    rank: self.rank,
                    what: why,
                });
            }
            let (guard, _) = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            if st.generation != generation {
                return Ok(st);
            }
            if let Some(why) = &st.aborted {
                return Err(self.aborted(why));
            }
        }
    }

    /// Posts `mine`, meets, lets `read` see every rank's contribution in rank order, meets
    /// again.
    fn exchange(
        &self,
        what: &str,
        mine: Vec<f32>,
        read: impl FnOnce(&[Vec<f32>]),
    ) -> Result<(), DistError> {
        let mut st = self.lock();
        if let Some(why) = &st.aborted {
            return Err(self.aborted(why));
        }
        st.slots[self.rank] = mine;
        let st = self.meet(st, what)?;
        read(&st.slots);
        self.meet(st, what).map(drop)
    }
}

impl Collective<CpuDevice> for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_gather(
        &self,
        _dev: &CpuDevice,
        send: &crate::device::CpuBuffer,
        send_off: usize,
        n: usize,
        recv: &mut crate::device::CpuBuffer,
        recv_off: usize,
    ) -> Result<(), DistError> {
        let op = "all_gather";
        check_extent(op, "send", send_off, n, send.len())?;
        check_extent(op, "recv", recv_off, n * self.shared.world, recv.len())?;
        let mine = send.as_slice()[send_off..send_off + n].to_vec();
        let out = &mut recv.as_mut_slice()[recv_off..recv_off + n * self.shared.world];
        self.exchange(op, mine, |slots| {
            for (dst, src) in out.chunks_exact_mut(n.max(1)).zip(slots) {
                dst.copy_from_slice(&src[..dst.len()]);
            }
        })
    }

    fn reduce_scatter(
        &self,
        _dev: &CpuDevice,
        send: &crate::device::CpuBuffer,
        send_off: usize,
        n: usize,
        recv: &mut crate::device::CpuBuffer,
        recv_off: usize,
    ) -> Result<(), DistError> {
        let op = "reduce_scatter";
        let world = self.shared.world;
        check_extent(op, "send", send_off, n * world, send.len())?;
        check_extent(op, "recv", recv_off, n, recv.len())?;
        let mine = send.as_slice()[send_off..send_off + n * world].to_vec();
        let out = &mut recv.as_mut_slice()[recv_off..recv_off + n];
        let part = self.rank * n..(self.rank + 1) * n;
        self.exchange(op, mine, |slots| sum_in_rank_order(out, slots, part))
    }

    fn all_reduce(
        &self,
        _dev: &CpuDevice,
        buf: &mut crate::device::CpuBuffer,
        off: usize,
        n: usize,
    ) -> Result<(), DistError> {
        let op = "all_reduce";
        check_extent(op, "buf", off, n, buf.len())?;
        let mine = buf.as_slice()[off..off + n].to_vec();
        let out = &mut buf.as_mut_slice()[off..off + n];
        self.exchange(op, mine, |slots| sum_in_rank_order(out, slots, 0..n))
    }

    fn broadcast(
        &self,
        _dev: &CpuDevice,
        buf: &mut crate::device::CpuBuffer,
        off: usize,
        n: usize,
        root: usize,
    ) -> Result<(), DistError> {
        let op = "broadcast";
        check_extent(op, "buf", off, n, buf.len())?;
        if root >= self.shared.world {
            return Err(DistError::Shape {
                op,
                what: format!(
                    "root {root} is not a rank of a world of {}",
                    self.shared.world
                ),
            });
        }
        let mine = if self.rank == root {
            buf.as_slice()[off..off + n].to_vec()
        } else {
            Vec::new()
        };
        let out = &mut buf.as_mut_slice()[off..off + n];
        self.exchange(op, mine, |slots| out.copy_from_slice(&slots[root]))
    }

    fn barrier(&self, _dev: &CpuDevice) -> Result<(), DistError> {
        self.exchange("barrier", Vec::new(), |_| {})
    }
}

/// `out = slots[0][part] + slots[1][part] + ...`, left to right.
fn sum_in_rank_order(out: &mut [f32], slots: &[Vec<f32>], part: std::ops::Range<usize>) {
    out.copy_from_slice(&slots[0][part.clone()]);
    for s in &slots[1..] {
        for (o, v) in out.iter_mut().zip(&s[part.clone()]) {
            *o += v;
        }
    }
}

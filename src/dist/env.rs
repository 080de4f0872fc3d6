//! The rank a launcher gave this process, read from its environment variables:
//!
//! - torchrun and DeepSpeed's launcher: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//!   `MASTER_ADDR`, `MASTER_PORT` (torch.distributed's `env://` init);
//! - Open MPI's `mpirun`: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//!   `OMPI_COMM_WORLD_LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_SIZE`;
//! - Slurm's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
//!   `SLURM_NTASKS_PER_NODE` — inside an `srun` step only (`SLURM_STEP_ID` set): an `sbatch`
//!   script has the job's task count too, and a plain `zinf train` there is one process.
//!
//! The first family present wins, in that order; `MASTER_ADDR` / `MASTER_PORT` are needed by
//! every family once the world is larger than one (mpirun and srun users export them, as
//! with DeepSpeed's `--launcher`). Nothing set is a world of one.

use super::DistError;

/// torch.distributed's default rendezvous port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Where this process stands among the ranks of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// This process's index among the ranks of its node (its GPU's ordinal).
    pub local_rank: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// Rank 0's address and port, where the others meet it.
    pub master_addr: String,
    pub master_port: u16,
    /// Which launcher's variables were read (`torchrun`, `mpirun`, `srun`, `none`).
    pub launcher: &'static str,
}

impl DistEnv {
    /// One rank, no launcher.
    pub fn single() -> Self {
        DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            launcher: "none",
        }
    }

    /// Reads this process's environment.
    ///
    /// # Errors
    /// As [`DistEnv::from_lookup`].
    pub fn from_env() -> Result<Self, DistError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (the environment, or a map in tests).
    ///
    /// # Errors
    /// A variable that is not a number, a rank outside the world, a world larger than one
    /// without `MASTER_ADDR` — each naming the variable and what to set.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let families: [(&'static str, [&str; 4]); 3] = [
            (
                "torchrun",
                ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
            ),
            (
                "mpirun",
                [
                    "OMPI_COMM_WORLD_RANK",
                    "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK",
                    "OMPI_COMM_WORLD_LOCAL_SIZE",
                ],
            ),
            (
                "srun",
                [
                    "SLURM_PROCID",
                    "SLURM_NTASKS",
                    "SLURM_LOCALID",
                    "SLURM_NTASKS_PER_NODE",
                ],
            ),
        ];
        // An sbatch script's environment names the job's tasks but is no task of an srun
        // step (no `SLURM_STEP_ID`, or the batch step's).
        // Slurm's special steps (batch, extern, interactive) have ids from 0xfffffff0 up.
        let srun_step = get("SLURM_STEP_ID")
            .or_else(|| get("SLURM_STEPID"))
            .is_some_and(|id| id.trim().parse::<u64>().is_ok_and(|n| n < 0xffff_fff0));
        let Some((launcher, [rank_k, world_k, local_k, local_world_k])) =
            families.into_iter().find(|(launcher, [rank, world, ..])| {
                (get(rank).is_some() || get(world).is_some()) && (*launcher != "srun" || srun_step)
            })
        else {
            return Ok(Self::single());
        };
        let num = |key: &str| -> Result<Option<usize>, DistError> {
            match get(key) {
                None => Ok(None),
                // Slurm writes per-node counts like "4(x2)": the first number is this node's.
                Some(v) => v
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
                    .map(Some)
                    .ok_or_else(|| {
                        DistError::Env(format!("{key}={v:?} is not a number (set by {launcher})"))
                    }),
            }
        };
        let need = |key: &str| -> Result<usize, DistError> {
            num(key)?.ok_or_else(|| {
                DistError::Env(format!(
                    "{key} is not set but {rank_k} or {world_k} is: the launcher ({launcher}) \
                     must set both"
                ))
            })
        };
        let (rank, world_size) = (need(rank_k)?, need(world_k)?);
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env(format!(
                "{rank_k}={rank} is not a rank of {world_k}={world_size}"
            )));
        }
        let local_rank = num(local_k)?.unwrap_or(rank);
        let local_world_size = num(local_world_k)?.unwrap_or(world_size);
        if local_rank >= local_world_size.max(1) {
            return Err(DistError::Env(format!(
                "{local_k}={local_rank} is not below {local_world_k}={local_world_size}"
            )));
        }
        let master_addr = match get("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ if world_size == 1 => "127.0.0.1".into(),
            _ => {
                return Err(DistError::Env(format!(
                    "{world_k}={world_size} but MASTER_ADDR is not set: export rank 0's host \
                     name or address as MASTER_ADDR (and MASTER_PORT, default \
                     {DEFAULT_MASTER_PORT}) on every rank"
                )))
            }
        };
        let master_port = match get("MASTER_PORT") {
            None => DEFAULT_MASTER_PORT,
            Some(p) => p.trim().parse().map_err(|_| {
                DistError::Env(format!("MASTER_PORT={p:?} is not a port number (1-65535)"))
            })?,
        };
        if master_port == 0 {
            return Err(DistError::Env(
                "MASTER_PORT=0: give a port number (1-65535)".into(),
            ));
        }
        Ok(DistEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            launcher,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<DistEnv, DistError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_one_rank() {
        assert_eq!(read(&[]).unwrap(), DistEnv::single());
    }

    #[test]
    fn torchrun_variables() {
        let e = read(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 8, 1, 2)
        );
        assert_eq!(
            (e.master_addr.as_str(), e.master_port, e.launcher),
            ("node0", 1234, "torchrun")
        );
    }

    #[test]
    fn mpirun_and_slurm_variables() {
        let e = read(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.launcher),
            (1, 2, 1, "mpirun")
        );
        let e = read(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
            ("SLURM_STEP_ID", "0"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.local_rank, e.local_world_size, e.launcher),
            (5, 1, 4, "srun")
        );
        // An sbatch script (no srun step) is one process, whatever the job's task count.
        let e = read(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]).unwrap();
        assert_eq!((e.world_size, e.launcher), (1, "none"));
        for batch in ["4294967291", "4294967294"] {
            let e = read(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_STEP_ID", batch),
            ])
            .unwrap();
            assert_eq!(e.world_size, 1, "step {batch}");
        }
    }

    #[test]
    fn bad_variables_name_themselves() {
        let msg = |v: &[(&str, &str)]| read(v).unwrap_err().to_string();
        assert!(msg(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK=2 is not a rank"));
        assert!(msg(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        assert!(msg(&[("RANK", "0")]).contains("WORLD_SIZE is not set"));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR is not set"));
        let e = msg(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]);
        assert!(e.contains("MASTER_PORT"), "{e}");
    }
}

//! Ranks from the environment users already have: torchrun's `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, or SLURM's `SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID` with the first host of `SLURM_JOB_NODELIST` as the rendezvous host.
//! torchrun's variables win when both are set (torchrun inside an allocation is the usual case).

use crate::{Error, Result};

/// The default rendezvous port (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

/// Where this process sits in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankInfo {
    pub rank: usize,
    pub world_size: usize,
    /// The GPU of this node this rank uses.
    pub local_rank: usize,
    /// Rank 0's host, where every rank meets ([`super::rendezvous`]).
    pub master_addr: String,
    pub master_port: u16,
    /// Which launcher's variables these came from: `torchrun` or `slurm`.
    pub launcher: &'static str,
}

impl RankInfo {
    /// A single-process job (rank 0 of 1).
    pub fn single() -> RankInfo {
        RankInfo {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
            launcher: "none",
        }
    }

    /// From this process's environment; `None` when no launcher set it.
    pub fn from_process_env() -> Result<Option<RankInfo>> {
        RankInfo::from_env(|k| std::env::var(k).ok())
    }

    /// From the variables `get` returns (the process environment, or a test's map). A variable
    /// that is set but malformed, or a rank outside the world, is an error naming it.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<RankInfo>> {
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::Msg(format!(
                        "{key}={v:?}: expected a non-negative integer (set by the launcher)"
                    ))
                }),
            }
        };
        let port = |default: u16| -> Result<u16> {
            match get("MASTER_PORT") {
                None => Ok(default),
                Some(v) => v.trim().parse::<u16>().map_err(|_| {
                    Error::Msg(format!("MASTER_PORT={v:?}: expected a TCP port (1-65535)"))
                }),
            }
        };
        let info = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            RankInfo {
                rank,
                world_size: world,
                local_rank: num("LOCAL_RANK")?.unwrap_or(rank),
                master_addr: get("MASTER_ADDR").ok_or_else(|| {
                    Error::Msg(
                        "RANK and WORLD_SIZE are set but MASTER_ADDR is not: rank 0's host is \
                         needed for the rendezvous (torchrun sets it; or export it)"
                            .into(),
                    )
                })?,
                master_port: port(DEFAULT_PORT)?,
                launcher: "torchrun",
            }
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            let nodes = get("SLURM_JOB_NODELIST")
                .or_else(|| get("SLURM_NODELIST"))
                .ok_or_else(|| {
                    Error::Msg(
                        "SLURM_PROCID and SLURM_NTASKS are set but SLURM_JOB_NODELIST is not: \
                         its first host is where the ranks meet"
                            .into(),
                    )
                })?;
            RankInfo {
                rank,
                world_size: world,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                master_addr: match get("MASTER_ADDR") {
                    Some(a) => a,
                    None => first_host(&nodes)?,
                },
                master_port: port(DEFAULT_PORT)?,
                launcher: "slurm",
            }
        } else {
            return Ok(None);
        };
        if info.world_size == 0 || info.rank >= info.world_size {
            return Err(Error::Msg(format!(
                "{} says rank {} of a world of {}: the rank must be below the world size",
                info.launcher, info.rank, info.world_size
            )));
        }
        Ok(Some(info))
    }
}

/// The first host of a SLURM host list: `node[01-04,07],gpu5` → `node01`, `a,b` → `a`,
/// `rack1-n[001-010]` → `rack1-n001`. Zero padding is kept as SLURM writes it.
pub fn first_host(nodelist: &str) -> Result<String> {
    let bad = || {
        Error::Msg(format!(
            "SLURM_JOB_NODELIST={nodelist:?}: not a SLURM host list (e.g. node[01-04,07],gpu5)"
        ))
    };
    let list = nodelist.trim();
    // the first entry ends at the first comma outside brackets
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(bad)?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &list[..end];
    let host = match first.find('[') {
        None => first.to_string(),
        Some(open) => {
            let close = first[open..].find(']').map(|c| open + c).ok_or_else(bad)?;
            let ranges = &first[open + 1..close];
            let lo = ranges.split([',', '-']).next().unwrap_or("");
            if lo.is_empty() || !lo.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            // SLURM allows one bracket per name segment; the first value of each names the host
            format!(
                "{}{lo}{}",
                &first[..open],
                first_host_rest(&first[close + 1..])?
            )
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

/// The rest of a host name after its first bracket, its own brackets resolved the same way.
fn first_host_rest(rest: &str) -> Result<String> {
    if rest.is_empty() {
        Ok(String::new())
    } else {
        first_host(rest)
    }
}

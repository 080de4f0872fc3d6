//! Rank 0 hands every other rank a blob over TCP (NCCL's 128-byte unique id, which
//! `ncclCommInitRank` needs on every rank): std only.
//!
//! Rank 0 listens at `MASTER_ADDR:MASTER_PORT`; every other rank connects (retrying while rank
//! 0 is not up yet) and says who it is (`ZINF` magic, protocol version, rank, world size).
//! Once all `world_size - 1` have arrived, rank 0 sends each the blob: the rendezvous is also
//! a barrier. A rank that never comes, two ranks claiming one number, or a different world
//! size are errors naming the ranks, the address and what to check; nothing waits forever.

use super::env::DistEnv;
use super::DistError;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"ZINF";
const VERSION: u32 = 1;
/// Largest blob accepted (NCCL's id is 128 bytes).
const MAX_BLOB_BYTES: u32 = 1 << 20;

/// Runs the rendezvous of `env`'s rank: rank 0 serves `blob` and returns it; the others
/// return what rank 0 sent. A world of one returns `blob` at once.
///
/// # Errors
/// Rank 0 cannot listen on the address, a rank does not arrive within `timeout`, a peer
/// speaks another protocol or claims a taken rank or another world size.
pub fn rendezvous(env: &DistEnv, blob: &[u8], timeout: Duration) -> Result<Vec<u8>, DistError> {
    if env.world_size == 1 {
        return Ok(blob.to_vec());
    }
    let addr = format!("{}:{}", env.master_addr, env.master_port);
    if env.rank == 0 {
        let listener = TcpListener::bind(&addr).map_err(|e| {
            DistError::Rendezvous(format!(
                "rank 0 cannot listen on {addr} ({e}): is MASTER_ADDR this host and \
                 MASTER_PORT free?"
            ))
        })?;
        serve(&listener, env.world_size, blob, timeout)?;
        Ok(blob.to_vec())
    } else {
        join(&addr, env.rank, env.world_size, timeout)
    }
}

/// Rank 0's side on a bound `listener`: waits for ranks `1..world_size`, then sends `blob` to
/// each.
///
/// # Errors
/// As [`rendezvous`].
pub fn serve(
    listener: &TcpListener,
    world_size: usize,
    blob: &[u8],
    timeout: Duration,
) -> Result<(), DistError> {
    let err = |what: String| DistError::Rendezvous(what);
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("{local}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (0..world_size).map(|_| None).collect();
    while peers[1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false)
                    .and_then(|_| s.set_read_timeout(Some(Duration::from_secs(10))))
                    .map_err(|e| err(format!("{from}: {e}")))?;
                let (rank, world) = read_hello(&mut s).map_err(|e| err(format!("{from}: {e}")))?;
                if world != world_size {
                    return Err(err(format!(
                        "rank {rank} at {from} was started with WORLD_SIZE={world}, rank 0 with \
                         {world_size}: start every rank with the same world size"
                    )));
                }
                if rank == 0 || rank >= world_size || peers[rank].is_some() {
                    return Err(err(format!(
                        "{from} claims rank {rank}, which is rank 0's, outside the world of \
                         {world_size}, or already taken: give every process its own RANK"
                    )));
                }
                peers[rank] = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> =
                        (1..world_size).filter(|&r| peers[r].is_none()).collect();
                    return Err(err(format!(
                        "ranks {missing:?} did not reach rank 0 at {local} within {:.0} s: \
                         are they started, with MASTER_ADDR/MASTER_PORT pointing here?",
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(err(format!("{local}: accept: {e}"))),
        }
    }
    let len = u32::try_from(blob.len()).map_err(|_| err("blob too large".into()))?;
    for (rank, s) in peers.iter_mut().enumerate().skip(1) {
        let s = s.as_mut().expect("every peer arrived");
        s.write_all(&len.to_le_bytes())
            .and_then(|_| s.write_all(blob))
            .map_err(|e| err(format!("sending to rank {rank}: {e}")))?;
    }
    Ok(())
}

/// A rank's side: connects to rank 0 at `addr` (retrying until `timeout`), says who it is,
/// and returns the blob rank 0 sends once everyone has arrived.
///
/// # Errors
/// As [`rendezvous`].
pub fn join(
    addr: &str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DistError> {
    let err = |what: String| DistError::Rendezvous(format!("rank {rank}: {what}"));
    let deadline = Instant::now() + timeout;
    let mut s = loop {
        let tried = addr
            .to_socket_addrs()
            .map_err(|e| {
                err(format!(
                    "MASTER_ADDR:MASTER_PORT {addr} does not resolve: {e}"
                ))
            })?
            .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok());
        if let Some(s) = tried {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "could not reach rank 0 at {addr} within {:.0} s: is rank 0 started, and \
                 MASTER_ADDR/MASTER_PORT the same on every rank?",
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut hello = Vec::with_capacity(16);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world_size as u32).to_le_bytes());
    s.write_all(&hello)
        .map_err(|e| err(format!("sending to rank 0 at {addr}: {e}")))?;
    // Rank 0 answers once every rank has arrived: wait up to what is left of the timeout.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    s.set_read_timeout(Some(left))
        .map_err(|e| err(format!("{addr}: {e}")))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| {
        err(format!(
            "no answer from rank 0 at {addr} ({e}): another rank is missing, or rank 0 failed"
        ))
    })?;
    let len = u32::from_le_bytes(len);
    if len > MAX_BLOB_BYTES {
        return Err(err(format!(
            "rank 0 at {addr} announced {len} bytes: not a zinf rendezvous"
        )));
    }
    let mut blob = vec![0u8; len as usize];
    s.read_exact(&mut blob)
        .map_err(|e| err(format!("reading from rank 0 at {addr}: {e}")))?;
    Ok(blob)
}

fn read_hello(s: &mut TcpStream) -> Result<(usize, usize), String> {
    let mut b = [0u8; 16];
    s.read_exact(&mut b)
        .map_err(|e| format!("no greeting: {e}"))?;
    if &b[..4] != MAGIC {
        return Err("not a zinf rank (another program connected to MASTER_PORT?)".into());
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if word(4) != VERSION {
        return Err(format!(
            "protocol version {} (this zinf speaks {VERSION}): run the same zinf on every rank",
            word(4)
        ));
    }
    Ok((word(8) as usize, word(12) as usize))
}

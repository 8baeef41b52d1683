//! The rendezvous: rank 0 hands a blob (NCCL's unique id, 128 bytes) to every other rank over
//! TCP at `MASTER_ADDR:MASTER_PORT`, with a timeout and an error that says which ranks never
//! arrived. No gradient ever travels this way; NCCL moves those.
//!
//! Protocol: rank 0 listens; every other rank connects (retrying until the deadline: rank 0 may
//! start last) and sends `clipcu1` + its rank (u32 LE) + the world size (u32 LE); rank 0 checks
//! both, and once all `world − 1` ranks are in, sends each the blob's length (u32 LE) and bytes.
//! A rank that rank 0 refuses (another world size, a rank number taken twice) gets
//! `u32::MAX` and a length-prefixed reason instead, so that it fails saying why.

use super::env::RankInfo;
use crate::{Error, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 7] = b"clipcu1";

fn io_err(what: &str, addr: &str, e: std::io::Error) -> Error {
    Error::Msg(format!("rendezvous at {addr}: {what}: {e}"))
}

/// Rank 0: `blob` to every other rank; the others: the blob rank 0 sent. Waits at most
/// `timeout` for the whole exchange.
pub fn rendezvous(info: &RankInfo, blob: Option<&[u8]>, timeout: Duration) -> Result<Vec<u8>> {
    let addr = format!("{}:{}", info.master_addr, info.master_port);
    let deadline = Instant::now() + timeout;
    if info.world_size == 1 {
        return Ok(blob.unwrap_or_default().to_vec());
    }
    if info.rank == 0 {
        let blob = blob.ok_or_else(|| Error::Msg("rendezvous: rank 0 needs the blob".into()))?;
        serve(&addr, info.world_size, blob, deadline, timeout)
    } else {
        join(&addr, info, deadline, timeout)
    }
}

fn serve(
    addr: &str,
    world: usize,
    blob: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io_err(
            "rank 0 cannot listen (is MASTER_ADDR this host, MASTER_PORT free?)",
            addr,
            e,
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("listener", addr, e))?;
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    while peers[1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)
                    .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(10))))
                    .map_err(|e| io_err("peer socket", addr, e))?;
                let mut hello = [0u8; 15];
                if s.read_exact(&mut hello).is_err() || &hello[..7] != MAGIC {
                    continue; // not one of ours (a port scanner, a stale run): ignore it
                }
                let rank = u32::from_le_bytes(hello[7..11].try_into().expect("4 bytes")) as usize;
                let their_world =
                    u32::from_le_bytes(hello[11..15].try_into().expect("4 bytes")) as usize;
                let refuse = |mut s: TcpStream, why: String| -> Error {
                    let _ = s
                        .write_all(&u32::MAX.to_le_bytes())
                        .and_then(|()| s.write_all(&(why.len() as u32).to_le_bytes()))
                        .and_then(|()| s.write_all(why.as_bytes()));
                    Error::Msg(why)
                };
                if their_world != world {
                    return Err(refuse(
                        s,
                        format!(
                            "rendezvous at {addr}: rank {rank} says the world has {their_world} \
                             ranks, rank 0 says {world}: the ranks were launched inconsistently"
                        ),
                    ));
                }
                if rank == 0 || rank >= world || peers[rank].is_some() {
                    return Err(refuse(
                        s,
                        format!(
                            "rendezvous at {addr}: a second rank {rank} (of {world}) arrived: \
                             two jobs share this port, or ranks were numbered twice"
                        ),
                    ));
                }
                peers[rank] = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world).filter(|&r| peers[r].is_none()).collect();
                    return Err(Error::Msg(format!(
                        "rendezvous at {addr}: after {timeout:?}, rank(s) {missing:?} of {world} \
                         never arrived"
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("accept", addr, e)),
        }
    }
    for (rank, s) in peers.iter_mut().enumerate().skip(1) {
        let s = s.as_mut().expect("all arrived");
        s.write_all(&(blob.len() as u32).to_le_bytes())
            .and_then(|()| s.write_all(blob))
            .map_err(|e| io_err(&format!("sending to rank {rank}"), addr, e))?;
    }
    Ok(blob.to_vec())
}

fn join(addr: &str, info: &RankInfo, deadline: Instant, timeout: Duration) -> Result<Vec<u8>> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| io_err("resolving MASTER_ADDR", addr, e))?
        .next()
        .ok_or_else(|| Error::Msg(format!("rendezvous: {addr} resolves to nothing")))?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e; // rank 0 not listening yet
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(Error::Msg(format!(
                    "rank {}: rank 0 at {addr} did not answer within {timeout:?} ({e})",
                    info.rank
                )))
            }
        }
    };
    let mut hello = MAGIC.to_vec();
    hello.extend((info.rank as u32).to_le_bytes());
    hello.extend((info.world_size as u32).to_le_bytes());
    stream
        .write_all(&hello)
        .map_err(|e| io_err("sending this rank's hello", addr, e))?;
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| io_err("socket", addr, e))?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| {
        Error::Msg(format!(
            "rank {}: rank 0 at {addr} took this rank in but sent nothing within {timeout:?}: \
             other ranks are missing ({e})",
            info.rank
        ))
    })?;
    if u32::from_le_bytes(len) == u32::MAX {
        let mut n = [0u8; 4];
        stream
            .read_exact(&mut n)
            .map_err(|e| io_err("reading rank 0's refusal", addr, e))?;
        let mut why = vec![0u8; u32::from_le_bytes(n) as usize];
        stream
            .read_exact(&mut why)
            .map_err(|e| io_err("reading rank 0's refusal", addr, e))?;
        return Err(Error::Msg(format!(
            "rank {}: rank 0 refused this rank: {}",
            info.rank,
            String::from_utf8_lossy(&why)
        )));
    }
    let mut blob = vec![0u8; u32::from_le_bytes(len) as usize];
    stream
        .read_exact(&mut blob)
        .map_err(|e| io_err("reading the blob", addr, e))?;
    Ok(blob)
}

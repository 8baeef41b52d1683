//! Data parallelism (issue 19), the parts that need no GPU: ranks from the launcher's
//! environment ([`env`]), the rendezvous where rank 0 hands out NCCL's id ([`rendezvous`]), and
//! the collectives interface with its in-process implementation for tests ([`comm`]), and the
//! NCCL probe ([`nccl`]). NCCL's communicator, the data-parallel step and sharded data come on
//! top of these.

pub mod comm;
pub mod env;
pub mod nccl;
pub mod rendezvous;

pub use comm::{Communicator, InProcess};
pub use env::{first_host, RankInfo};
pub use rendezvous::rendezvous;

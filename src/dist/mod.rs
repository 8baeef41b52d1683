//! Data parallelism (issue 19): ranks from the launcher's environment ([`env`]), the rendezvous
//! where rank 0 hands out NCCL's id ([`rendezvous`]), the collectives interface with its
//! in-process implementation for tests ([`comm`]), NCCL — its probe and the communicator on
//! Cuda tensors ([`nccl`]) — and the watchdog that follows NCCL's collectives for it
//! ([`watchdog`]). The data-parallel step (`train::data_parallel`) is generic over
//! [`Communicator`].

pub mod comm;
pub mod env;
pub mod nccl;
pub mod rendezvous;
pub mod watchdog;

pub use comm::{Communicator, InProcess, PendingCollective};
pub use env::{first_host, RankInfo};
pub use rendezvous::rendezvous;

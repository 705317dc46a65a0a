//! belated's worker processes, with no Python in this crate: the wire format parent and workers speak
//! ([`wire`]); the processes themselves ([`process`]): started with the parent's import path,
//! talked to over private socket pairs (never their standard streams), watched through a pidfd so a
//! death is seen even when a grandchild holds the sockets, killed and reaped; a cluster's set of them
//! ([`pool`]: started together, replaced, held to a memory limit); and where each value they keep
//! lives ([`directory`]); what moves off the workers a scale down retires ([`resize`]); and the runner of computations on them ([`runner`]), generic over the codec
//! of the host language's values (cloudpickle in `belated-py`) and over the transport to the workers,
//! so its policy is tested here with in-thread fake workers. The policies it follows (placement,
//! lineage) are in `belated-core`.
//!
//! The worker's side is `python/belated/_worker.py`; the golden byte vectors in `golden/wire.txt`
//! are checked by both sides' tests.

pub mod batching;
pub mod directory;
pub mod error;
pub mod pool;
pub mod process;
pub mod resize;
pub mod runner;
pub mod wire;

pub use error::Error;
pub use pool::Workers;
pub use process::{MemoryLimit, Requests, Spec, WorkerProcess};
pub use runner::{Cluster, ClusterRunner, Codec, Running, Transport};

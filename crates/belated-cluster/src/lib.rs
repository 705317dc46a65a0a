//! belated's worker processes, with no Python in this crate: the wire format parent and workers speak
//! ([`wire`]), and the processes themselves ([`process`]): started with the parent's import path,
//! talked to over private socket pairs (never their standard streams), watched through a pidfd so a
//! death is seen even when a grandchild holds the sockets, killed and reaped.
//!
//! The worker's side is `python/belated/_worker.py`; the golden byte vectors in `golden/wire.txt`
//! are checked by both sides' tests.

pub mod directory;
pub mod error;
pub mod process;
pub mod wire;

pub use error::Error;
pub use process::{Spec, WorkerProcess};

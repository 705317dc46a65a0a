//! A live dashboard for belated computations: progress per function, a task stream, the task graph
//! coloured by task status, and the CPU and memory of this process and its worker processes, updating
//! while a computation runs.
//!
//! Invariants and policy:
//! - The page and everything it needs are compiled into the binary: it works offline, loads nothing
//!   from elsewhere, and offers no way to run code (it only reads state).
//! - It listens on loopback unless told otherwise; on any other address every request must carry a
//!   token of at least [`MIN_TOKEN_LENGTH`] characters, which the printed URL includes.
//! - It answers only requests whose `Host` header names it ([`hosts`]), so that a web page elsewhere
//!   cannot read it through DNS rebinding.
//! - The engine feeds a [`Hub`]; the server only reads it. Updates are pushed with server-sent events,
//!   one JSON document per [`TICK`], each carrying only what changed for that page.

mod hosts;
mod hub;
mod resources;
mod server;

use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use hub::{ComputeSpec, Cursor, Drawable, Hub, Live, Status, GRAPH_TASK_LIMIT};

/// The shortest token accepted off loopback: a token must not be guessable.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// How often pages are updated.
pub const TICK: Duration = Duration::from_millis(200);

/// Draws a computation's graph as SVG from each task's label and the `(dependency, dependent)` edges.
/// The SVG must give task `i` the element id `task-{i}` so the page can colour it by status.
pub type GraphRenderer =
    Arc<dyn Fn(&[Arc<str>], &[(u32, u32)]) -> Result<String, String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot use {0:?} as the dashboard's address")]
    Address(String),
    #[error("cannot listen on {address}: {source}; choose another port")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the dashboard: {0}")]
    Start(#[source] std::io::Error),
    #[error(
        "a dashboard listening on {0} (not loopback) needs a token of at least {MIN_TOKEN_LENGTH} \
         characters; pass none to have a random one made"
    )]
    WeakToken(IpAddr),
}

/// A running dashboard server; dropping it stops the server.
pub struct Dashboard {
    address: SocketAddr,
    host: String,
    token: Option<Arc<str>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// Serves `hub` on `host:port` (port 0 picks a free one). Off loopback a token is required: the one
    /// given, or a random one.
    pub fn start(
        hub: Arc<Hub>,
        host: &str,
        port: u16,
        token: Option<String>,
        renderer: GraphRenderer,
    ) -> Result<Self, DashboardError> {
        let address = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| DashboardError::Address(format!("{host}:{port}")))?;
        let loopback = is_loopback(address.ip());
        let token = match token {
            Some(token) if !loopback && token.chars().count() < MIN_TOKEN_LENGTH => {
                return Err(DashboardError::WeakToken(address.ip()))
            }
            Some(token) => Some(Arc::from(token)),
            None if !loopback => Some(Arc::from(random_token())),
            None => None,
        };
        let listener = TcpListener::bind(address).map_err(|source| DashboardError::Bind {
            address: address.to_string(),
            source,
        })?;
        let address = listener.local_addr().map_err(DashboardError::Start)?;
        listener
            .set_nonblocking(true)
            .map_err(DashboardError::Start)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let app = server::App {
            hub,
            hosts: Arc::new(hosts::AllowedHosts::new(host, address.ip())),
            token: token.clone(),
            renderer,
        };
        let thread = std::thread::Builder::new()
            .name("belated-dashboard".into())
            .spawn(move || server::run(listener, app, stopped))
            .map_err(DashboardError::Start)?;
        Ok(Dashboard {
            address,
            host: host.to_string(),
            token,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The page's URL, with the token when one is required.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let base = format!("http://{host}:{}/", self.address.port());
        match &self.token {
            Some(token) => format!("{base}?token={token}"),
            None => base,
        }
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may have ended already; then there is nobody to tell.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread has been printed by the runtime; stopping goes on.
            let _ = thread.join();
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// 128 unpredictable bits: the standard library seeds each `RandomState` from the operating system.
fn random_token() -> String {
    use std::hash::BuildHasher;
    let words: [u64; 2] =
        std::array::from_fn(|lane| std::collections::hash_map::RandomState::new().hash_one(lane));
    format!("{:016x}{:016x}", words[0], words[1])
}

//! A worker process (`python -c <bootstrap> CONNECTIONS PRELOAD`, which runs `belated._worker`): spawn,
//! ready, talk, watch, kill, reap.
//!
//! The worker's side of the handshake: it finds its control socket at fd 3 and its connections at fds
//! 4.., writes one byte on the control socket when it is ready, and exits when that socket closes.
//!
//! Invariants, each against a hostile but ordinary task:
//! - The protocol never shares a descriptor with user code. The worker's standard input is
//!   `/dev/null`; its stdout and stderr are pipes whose lines this process forwards to its own fd 1
//!   and fd 2, prefixed `[worker PID] `, what they hold when a reply comes before the reply is used.
//!   The protocol runs on socket pairs handed over as fd 3 (control: the worker says it is ready on
//!   it, and exits when it closes) and fd 4.. (one per connection).
//! - A death is seen from the process, through a pidfd, never only from end-of-file: a daemon the
//!   task forked may hold the sockets open forever. Every wait on a socket also waits on the pidfd.
//! - The worker imports with the parent's `sys.path` semantics, as multiprocessing's spawn: its
//!   bootstrap replaces its path with the parent's before importing anything (see [`Spec`]).
//! - Killing goes through the pidfd, so it can never hit a recycled pid; dropping the handle kills and
//!   reaps the process.

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::error::Error;
use crate::wire::{self, Frame, ReceiveDescriptor, SendDescriptor};

/// The worker's first descriptor: the control socket; its connections follow.
const CONTROL_FD: RawFd = 3;

/// A worker's memory limit, and how the user wrote it (`"2GB"`, a fraction of memory…), which is what
/// the message about a worker killed for exceeding it shows.
#[derive(Debug, Clone)]
pub struct MemoryLimit {
    /// The resident bytes a worker may use.
    pub bytes: u64,
    /// The limit as the user gave it.
    pub shown: String,
}

impl MemoryLimit {
    /// A limit of `bytes`, shown as `shown` where the user wrote it otherwise.
    pub fn new(bytes: u64, shown: Option<String>) -> Self {
        let shown = shown.unwrap_or_else(|| format!("{bytes} bytes"));
        MemoryLimit { bytes, shown }
    }
}

/// How to start a worker process: for belated, Python with a bootstrap that takes the parent's path and
/// runs `belated._worker CONNECTIONS PRELOAD` (see `belated-py`); a shell script in this crate's tests.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// How many connections to open: one per thread that will send it calls, and one for fetches.
    pub connections: usize,
    /// How long it may take to start and say it is ready.
    pub start_timeout: Duration,
    /// What answers the requests its tasks send while they run; without it, such a request is a
    /// broken protocol and loses the worker.
    pub requests: Option<Requests>,
}

/// What answers a worker's [`wire::CLIENT`] request: the request's frames after its header in, the
/// reply's frames out. It runs on the thread that waits for the task's reply, which goes on waiting
/// once the answer is sent (so the task may wait on what it asked for without holding anything else).
#[derive(Clone)]
pub struct Requests(pub Arc<dyn Fn(Vec<Frame>) -> Vec<Frame> + Send + Sync>);

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests(..)")
    }
}

/// A running worker process. Dropping it kills and reaps it.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Mutex<Child>,
    pid: u32,
    pidfd: Arc<OwnedFd>,
    /// The worker says it is ready on it, and exits when it closes.
    control: UnixStream,
    connections: Vec<Mutex<Connection>>,
    /// The bytes it used when it was killed for going over its memory limit; 0 if it was not.
    over_memory: AtomicU64,
}

impl WorkerProcess {
    /// Starts a worker and waits until it says it is ready.
    pub fn spawn(spec: &Spec) -> Result<Self, Error> {
        let process = Self::start(spec)?;
        process.wait_ready(spec.start_timeout)?;
        Ok(process)
    }

    /// Starts a worker; [`wait_ready`](Self::wait_ready) waits for it to say it is ready, so that
    /// several can start at once.
    pub fn start(spec: &Spec) -> Result<Self, Error> {
        Self::start_descriptors(spec).map_err(|error| match error {
            Error::Spawn(error) if error.raw_os_error() == Some(libc::EMFILE) => {
                Error::Spawn(out_of_descriptors(spec))
            }
            other => other,
        })
    }

    fn start_descriptors(spec: &Spec) -> Result<Self, Error> {
        let (control, child_control) = UnixStream::pair().map_err(Error::Spawn)?;
        let mut ours = Vec::with_capacity(spec.connections);
        let mut theirs = vec![child_control];
        for _ in 0..spec.connections {
            let (mine, its) = UnixStream::pair().map_err(Error::Spawn)?;
            ours.push(mine);
            theirs.push(its);
        }
        let sources: Vec<RawFd> = theirs.iter().map(AsRawFd::as_raw_fd).collect();
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only calls async-signal-safe functions (fcntl, dup2, close) on
        // descriptors that stay open in the parent until spawn returns.
        unsafe {
            command.pre_exec(move || hand_over(&sources));
        }
        let mut child = command.spawn().map_err(Error::Spawn)?;
        drop(theirs);
        let pid = child.id();
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Arc::new(fd),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Spawn(error));
            }
        };
        let prefix = format!("[worker {pid}] ");
        let outputs: Arc<[Arc<Output>]> = [
            child.stdout.take().map(|pipe| {
                Output::new(pipe.into(), &prefix, |bytes| {
                    write_whole(io::stdout().lock(), bytes)
                })
            }),
            child.stderr.take().map(|pipe| {
                Output::new(pipe.into(), &prefix, |bytes| {
                    write_whole(io::stderr().lock(), bytes)
                })
            }),
        ]
        .into_iter()
        .flatten()
        .collect::<io::Result<_>>()
        .map_err(Error::Spawn)?;
        for output in outputs.iter() {
            forward(output);
        }
        let connections = ours
            .into_iter()
            .map(|stream| {
                Connection::new(stream, &pidfd, spec.requests.clone(), &outputs).map(Mutex::new)
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(Error::Spawn)?;
        Ok(WorkerProcess {
            child: Mutex::new(child),
            pid,
            pidfd,
            control,
            connections,
            over_memory: AtomicU64::new(0),
        })
    }

    /// Waits up to `timeout` for the started worker to say it is ready (else kills it).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let fd = self.control.as_raw_fd();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_for(fd, libc::POLLIN, self.pidfd.as_raw_fd(), Some(left)) {
                Ok(true) => {
                    let mut byte = [0u8];
                    return match (&self.control).read(&mut byte) {
                        Ok(1) => Ok(()),
                        _ => Err(Error::NotReady(self.ending(None))),
                    };
                }
                Ok(false) if Instant::now() < deadline => continue,
                Ok(false) => {
                    self.kill();
                    return Err(Error::NotReady(format!(
                        "it was not ready after {} s",
                        timeout.as_secs()
                    )));
                }
                Err(_) => return Err(Error::NotReady(self.ending(None))),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a request on connection `index` and reads the reply; [`Error::Lost`] if the worker died.
    pub fn exchange(&self, index: usize, frames: &[Frame]) -> Result<Vec<Frame>, Error> {
        self.connection(index).exchange(frames)
    }

    /// Connection `index`, for a caller that sends several requests in a row.
    pub fn connection(&self, index: usize) -> MutexGuard<'_, Connection> {
        self.connections[index].lock()
    }

    /// Kills the worker (at once, with whatever it runs); its connections then fail with
    /// [`Error::Lost`]. Safe from any thread, and at any time: the pidfd names this process only.
    pub fn kill(&self) {
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// Kills the worker for using `used` bytes, which its ending then reports.
    pub fn kill_for_memory(&self, used: u64) {
        self.over_memory.store(used.max(1), SeqCst);
        self.kill();
    }

    /// The memory it holds (resident set), if it still runs.
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Whether the process has ended (its pidfd is readable), whether or not it was reaped yet.
    pub fn has_exited(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut fd, 1, 0) > 0 }
    }

    pub fn over_memory(&self) -> bool {
        self.over_memory.load(SeqCst) != 0
    }

    /// How the worker ended, for error messages: killed over `memory_limit`, or died with its
    /// [exit status](Self::exit_status).
    pub fn ending(&self, memory_limit: Option<&MemoryLimit>) -> String {
        let used = self.over_memory.load(SeqCst);
        match memory_limit {
            Some(limit) if used != 0 => format!(
                "it was killed for using {} MB, over its memory_limit of {}",
                used / 1_000_000,
                limit.shown
            ),
            _ => format!("it died ({})", self.exit_status()),
        }
    }

    /// Its exit status once it has one (waiting up to 2 s: it is dying), else "unresponsive".
    pub fn exit_status(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut child = self.child.lock();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => return "unresponsive".to_string(),
                Err(error) => return error.to_string(),
            }
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.get_mut().wait();
    }
}

/// One connection to a worker: requests and replies, each wait also watching the worker's pidfd.
#[derive(Debug)]
pub struct Connection {
    requests: BufWriter<Watched>,
    replies: BufReader<Watched>,
    answers: Option<Requests>,
    /// The worker's output pipes, forwarded up to each reply before it is returned.
    outputs: Arc<[Arc<Output>]>,
}

impl Connection {
    fn new(
        stream: UnixStream,
        pidfd: &Arc<OwnedFd>,
        answers: Option<Requests>,
        outputs: &Arc<[Arc<Output>]>,
    ) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        // Both directions on one descriptor: a cluster of many workers runs out of them soon enough.
        let stream = Arc::new(stream);
        let watched = |stream| Watched {
            stream,
            pidfd: Arc::clone(pidfd),
            descriptors: VecDeque::new(),
        };
        Ok(Connection {
            requests: BufWriter::with_capacity(1 << 16, watched(Arc::clone(&stream))),
            replies: BufReader::with_capacity(1 << 16, watched(stream)),
            answers,
            outputs: Arc::clone(outputs),
        })
    }

    /// Sends one message and reads the reply; [`Error::Lost`] if the worker died (the connection is
    /// then useless: the worker is replaced, not this connection).
    /// Requests the task sends meanwhile are answered in between.
    pub fn exchange(&mut self, frames: &[Frame]) -> Result<Vec<Frame>, Error> {
        self.send(frames)?;
        self.receive()
    }

    /// Reads the next reply, as [`Connection::exchange`] does after its request: for a request
    /// answered in several messages (a [`wire::BATCH`] that overran).
    pub fn receive(&mut self) -> Result<Vec<Frame>, Error> {
        loop {
            let mut reply = wire::read_message(&mut self.replies).map_err(|_| Error::Lost)?;
            if !wire::is_client_request(&reply) {
                for output in self.outputs.iter() {
                    output.forward_pending();
                }
                return Ok(reply);
            }
            let answers = self.answers.clone().ok_or(Error::Lost)?;
            self.send(&(answers.0)(reply.split_off(1)))?;
        }
    }

    fn send(&mut self, frames: &[Frame]) -> Result<(), Error> {
        wire::write_message(&mut self.requests, frames)
            .and_then(|()| self.requests.flush())
            .map_err(|_| Error::Lost)
    }
}

/// A non-blocking socket whose every wait also ends when the worker's process does. It reads with
/// `recvmsg`, keeping the descriptors that come with the bytes (shared-memory segments) in order.
#[derive(Debug)]
struct Watched {
    stream: Arc<UnixStream>,
    pidfd: Arc<OwnedFd>,
    descriptors: VecDeque<OwnedFd>,
}

impl Watched {
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        if wait_for(
            self.stream.as_raw_fd(),
            events,
            self.pidfd.as_raw_fd(),
            None,
        )? {
            Ok(())
        } else {
            Err(io::ErrorKind::ConnectionAborted.into())
        }
    }
}

/// Room for the descriptors of one read: the kernel ends a read after the bytes that carry
/// descriptors, and the wire attaches at most one to each send.
const DESCRIPTORS_PER_READ: usize = 4;

impl Watched {
    /// One `recvmsg`: bytes into `buf`, descriptors onto the queue (close-on-exec, so a task's
    /// subprocess never inherits them).
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64 words, so the control buffer is aligned for cmsghdr.
        let mut control = [0u64; 2 + DESCRIPTORS_PER_READ];
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg on our socket with the buffers above.
        let n = unsafe {
            libc::recvmsg(
                self.stream.as_raw_fd(),
                &mut message,
                libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the CMSG macros walk the control buffer the kernel filled; each SCM_RIGHTS
        // payload is an array of descriptors now ours.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&message);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET
                    && (*header).cmsg_type == libc::SCM_RIGHTS
                {
                    let data = libc::CMSG_DATA(header).cast::<RawFd>();
                    let payload = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..payload / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        self.descriptors.push_back(OwnedFd::from_raw_fd(fd));
                    }
                }
                header = libc::CMSG_NXTHDR(&message, header);
            }
        }
        if message.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more descriptors came with one read than the wire sends",
            ));
        }
        Ok(n as usize)
    }

    /// One `sendmsg` of (the start of) `bytes` with `fd` attached.
    fn send_with(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let mut control = [0u64; 3];
        // SAFETY: as in `receive`; the one header holds one descriptor, which the kernel duplicates
        // into the receiver.
        unsafe {
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd.as_raw_fd());
            let n = libc::sendmsg(self.stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.receive(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(libc::POLLIN)?,
                other => return other,
            }
        }
    }
}

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&*self.stream).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(libc::POLLOUT)?,
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SendDescriptor for BufWriter<Watched> {
    fn write_with_descriptor(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        self.flush()?;
        let stream = self.get_mut();
        let sent = loop {
            match stream.send_with(bytes, fd) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.wait(libc::POLLOUT)?,
                other => break other?,
            }
        };
        // The descriptor went with the first byte; the rest are ordinary.
        stream.write_all(&bytes[sent..])
    }
}

impl ReceiveDescriptor for BufReader<Watched> {
    fn take_descriptor(&mut self) -> io::Result<OwnedFd> {
        self.get_mut().descriptors.pop_front().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a segment frame came without its descriptor",
            )
        })
    }
}

/// The descriptors this process holds for each worker: its control socket, its connections, the
/// pipes of its stdout and stderr, and its pidfd.
fn descriptors_per_worker(connections: usize) -> usize {
    connections + 4
}

/// Why a worker could not start when this process is out of descriptors, with what to do about it.
fn out_of_descriptors(spec: &Spec) -> io::Error {
    // SAFETY: getrlimit fills the zeroed struct.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        format!("its limit of {}", limit.rlim_cur)
    } else {
        "its limit".to_string()
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count());
    io::Error::other(format!(
        "this process is out of file descriptors ({open} open, {limit}), and each worker process \
             takes {}; raise the limit (`ulimit -n`, or resource.setrlimit(resource.RLIMIT_NOFILE, \
             ...)), or use fewer workers",
        descriptors_per_worker(spec.connections)
    ))
}

/// Waits until `fd` is ready for `events` (true), or the process of `pidfd` has exited while `fd` is
/// not ready (an error), or `timeout` passed (false).
fn wait_for(
    fd: RawFd,
    events: libc::c_short,
    pidfd: RawFd,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
        if fds[1].revents != 0 {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        return Ok(false);
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// In the child before exec: puts `sources` at fds 3, 4, ... (open across exec). They are first
/// copied above that range, so that a source already sitting in it is not overwritten before it moves.
fn hand_over(sources: &[RawFd]) -> io::Result<()> {
    let above = CONTROL_FD + sources.len() as RawFd;
    let mut copies = Vec::with_capacity(sources.len());
    for &source in sources {
        // SAFETY: fcntl/dup2/close on descriptors of this (forked) process; async-signal-safe.
        let copy = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        copies.push(copy);
    }
    for (target, &copy) in (CONTROL_FD..).zip(&copies) {
        // SAFETY: as above; dup2 leaves the target open across exec.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Forwards what comes on `output`'s pipe on a thread of its own, which ends when every process
/// holding the pipe's other end has closed it.
fn forward(output: &Arc<Output>) {
    let output = Arc::clone(output);
    let spawned = std::thread::Builder::new()
        .name("belated-worker-output".into())
        .spawn(move || output.forward_until_closed());
    // Without the thread the pipe closes and the worker's prints fail; say why.
    if let Err(error) = spawned {
        let _ = writeln!(
            io::stderr(),
            "belated: cannot forward a worker's output: {error}"
        );
    }
}

/// Where a worker's output goes: our stdout or stderr.
type Ours = fn(&[u8]);

/// Writes `bytes` to `out` in one write, flushed; a closed stdout or stderr of ours loses them.
fn write_whole(mut out: impl Write, bytes: &[u8]) {
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// One of a worker's output pipes (stdout or stderr), forwarded to ours line by line. A thread of its
/// own forwards what comes; a connection receiving a reply first forwards what the pipe holds, so that
/// what a task printed before its reply is out before its caller goes on, as when a process prints to
/// the terminal itself (the thread alone may still be on its way there). Both read under one lock,
/// which a reader holds until what it read is written.
#[derive(Debug)]
pub(crate) struct Output {
    /// Non-blocking.
    pipe: std::fs::File,
    lines: Mutex<Lines<Ours>>,
}

impl Output {
    fn new(pipe: OwnedFd, prefix: &str, ours: Ours) -> io::Result<Arc<Self>> {
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL) };
        if flags < 0
            || unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Output {
            pipe: pipe.into(),
            lines: Mutex::new(Lines::new(prefix.as_bytes(), ours)),
        }))
    }

    /// Forwards what the pipe holds now, and no more: a task's daemon printing on and on does not keep
    /// the reply waiting.
    fn forward_pending(&self) {
        let mut lines = self.lines.lock();
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes the bytes waiting in the pipe into the int.
        if unsafe { libc::ioctl(self.pipe.as_raw_fd(), libc::FIONREAD, &mut pending) } == 0 {
            self.read_into(&mut lines, usize::try_from(pending).unwrap_or(0));
        }
    }

    /// Forwards all that comes until the pipe is closed; a last line without a newline gets one.
    fn forward_until_closed(&self) {
        loop {
            let mut fd = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut fd, 1, -1) } < 0
                && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
            {
                break;
            }
            if !self.read_into(&mut self.lines.lock(), usize::MAX) {
                break;
            }
        }
        self.lines.lock().end();
    }

    /// Reads up to `limit` bytes, as many as are there, into `lines`; false once the pipe is closed.
    fn read_into(&self, lines: &mut Lines<Ours>, mut limit: usize) -> bool {
        let mut buf = [0u8; 16 << 10];
        while limit > 0 {
            let want = buf.len().min(limit);
            match (&self.pipe).read(&mut buf[..want]) {
                Ok(0) => return false,
                Ok(n) => {
                    lines.take(&buf[..n]);
                    limit -= n;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// The most of one line held before it is written: a task printing without a newline (a progress bar
/// redrawn with `\r`, a binary dump) is forwarded as it prints, and costs this much memory at most.
const LONGEST_HELD_LINE: usize = 64 << 10;

/// A worker's output cut into lines, each written to `ours` with a prefix, in one write (so lines of
/// several workers never interleave) unless longer than [`LONGEST_HELD_LINE`]: then in pieces of at
/// least that size, the first prefixed, as they come.
struct Lines<W> {
    prefix: Box<[u8]>,
    /// The line so far, prefixed unless part of it was written.
    line: Vec<u8>,
    /// Whether part of the current line was written, and `line` holds only what follows it.
    continued: bool,
    ours: W,
}

impl<W> std::fmt::Debug for Lines<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lines")
            .field("held", &self.line.len())
            .finish_non_exhaustive()
    }
}

impl<W: FnMut(&[u8])> Lines<W> {
    fn new(prefix: &[u8], ours: W) -> Self {
        Lines {
            prefix: prefix.into(),
            line: prefix.to_vec(),
            continued: false,
            ours,
        }
    }

    /// Takes bytes read from the pipe: writes each line they end, and what reaches the longest held.
    fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let ended = match bytes.iter().position(|&byte| byte == b'\n') {
                Some(at) => {
                    self.line.extend_from_slice(&bytes[..=at]);
                    bytes = &bytes[at + 1..];
                    true
                }
                None => {
                    self.line.extend_from_slice(bytes);
                    bytes = &[];
                    false
                }
            };
            if ended || self.line.len() >= LONGEST_HELD_LINE {
                (self.ours)(&self.line);
                self.line.clear();
                self.continued = !ended;
                if ended {
                    self.line.extend_from_slice(&self.prefix);
                }
            }
        }
    }

    /// The pipe is closed: a last line without a newline gets one.
    fn end(&mut self) {
        if self.continued || self.line.len() > self.prefix.len() {
            self.line.push(b'\n');
            (self.ours)(&self.line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` through [`Lines`] as a pipe gives it, `chunk` bytes a read; what was written, a write an
    /// entry.
    fn forwarded(input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut writes = Vec::new();
        let mut lines = Lines::new(b"[w] ", |bytes: &[u8]| writes.push(bytes.to_vec()));
        for read in input.chunks(chunk) {
            lines.take(read);
        }
        lines.end();
        writes
    }

    #[test]
    fn a_line_longer_than_held_is_forwarded_in_pieces_as_it_comes() {
        let long = vec![b'x'; 3 * LONGEST_HELD_LINE + 5];
        let mut input = long.clone();
        input.extend_from_slice(b"\nshort\nlast");
        // Read as from a pipe: 8 KiB at a time.
        let writes = forwarded(&input, 8 << 10);
        // Each piece written as soon as it reached the limit: never the whole long line held.
        assert!(writes.len() >= 5, "{} writes", writes.len());
        assert!(writes
            .iter()
            .all(|piece| piece.len() <= LONGEST_HELD_LINE + (8 << 10)));
        assert!(writes[0].starts_with(b"[w] xxx"));
        let mut expected = b"[w] ".to_vec();
        expected.extend_from_slice(&long);
        expected.extend_from_slice(b"\n[w] short\n[w] last\n");
        assert_eq!(writes.concat(), expected);
        assert_eq!(
            writes[writes.len() - 2],
            b"[w] short\n",
            "a short line is one write"
        );
    }

    #[test]
    fn a_long_last_line_without_a_newline_gets_one() {
        let writes = forwarded(&[b'y'; LONGEST_HELD_LINE], 8 << 10);
        let mut expected = b"[w] ".to_vec();
        expected.extend_from_slice(&[b'y'; LONGEST_HELD_LINE]);
        expected.push(b'\n');
        assert_eq!(writes.concat(), expected);
    }

    #[test]
    fn lines_cut_across_reads_are_written_whole() {
        let writes = forwarded(b"one\ntw", 3);
        assert_eq!(writes, [b"[w] one\n".to_vec(), b"[w] tw\n".to_vec()]);
    }

    /// A worker that is a shell script (`$0` is "worker"): the handshake without Python.
    fn shell(script: &str, connections: usize) -> Spec {
        Spec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "worker".into()],
            env: Vec::new(),
            connections,
            start_timeout: Duration::from_secs(30),
            requests: None,
        }
    }

    const READY: &str = "printf r >&3; ";

    #[test]
    fn a_worker_talks_on_its_own_sockets_each_connection_apart() {
        // Echoes whatever comes on its third connection (fd 6), so a message comes back as itself.
        let worker = WorkerProcess::spawn(&shell(&format!("{READY}exec cat <&6 >&6"), 3))
            .expect("the worker starts");
        let message: Vec<Frame> = [b"frame".to_vec(), Vec::new(), vec![7; 100_000]]
            .map(Frame::from)
            .into();
        assert_eq!(worker.exchange(2, &message).expect("an echo"), message);
        assert_eq!(worker.exchange(2, &message).expect("again"), message);
    }

    #[test]
    fn a_death_is_seen_even_while_a_daemon_holds_the_sockets() {
        // The daemon inherits every socket and reads the request, as a forked child could; the worker
        // itself has exited. End-of-file never comes, the pidfd tells.
        let worker =
            WorkerProcess::spawn(&shell(&format!("{READY}cat <&4 >/dev/null & exit 7"), 1))
                .expect("the worker starts");
        assert!(matches!(
            worker.exchange(0, &[b"hello".to_vec().into()]),
            Err(Error::Lost)
        ));
        assert_eq!(worker.exit_status(), "exit status: 7");
        // Dropping the worker closes our ends; the daemon's cat then ends too.
    }

    #[test]
    fn a_killed_worker_fails_its_exchange_and_says_so() {
        let worker = Arc::new(
            WorkerProcess::spawn(&shell(&format!("{READY}exec sleep 1000"), 1))
                .expect("the worker starts"),
        );
        assert!(!worker.has_exited());
        let killer = {
            let worker = Arc::clone(&worker);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                worker.kill();
            })
        };
        assert!(matches!(
            worker.exchange(0, &[b"never answered".to_vec().into()]),
            Err(Error::Lost)
        ));
        killer.join().expect("the killer thread");
        assert_eq!(worker.exit_status(), "signal: 9 (SIGKILL)");
        assert!(worker.has_exited());
        worker.kill_for_memory(3 << 20);
        let limit = MemoryLimit::new(1 << 20, Some("1MiB".into()));
        let why = worker.ending(Some(&limit));
        assert!(
            why.contains("using 3 MB, over its memory_limit of 1MiB"),
            "{why}"
        );
    }

    #[test]
    fn a_worker_that_dies_before_it_is_ready_is_reported_with_its_status() {
        let error = WorkerProcess::spawn(&shell("exit 3", 1)).expect_err("it never says ready");
        assert!(
            matches!(&error, Error::NotReady(why) if why.contains("exit status: 3")),
            "{error}"
        );
        let missing = Spec {
            program: "/nonexistent/python".into(),
            ..shell("", 1)
        };
        assert!(matches!(
            WorkerProcess::spawn(&missing),
            Err(Error::Spawn(_))
        ));
    }

    #[test]
    fn stdin_is_dev_null() {
        // `read` returns at once at the end of /dev/null; on an inherited terminal or pipe it would
        // wait, and the worker would never be ready.
        let worker = WorkerProcess::spawn(&shell(
            &format!("read line; [ -z \"$line\" ] && {READY}exec cat <&4 >&4"),
            1,
        ))
        .expect("the worker starts");
        let one = [Frame::from(vec![1])];
        assert_eq!(worker.exchange(0, &one).expect("an echo"), one);
    }

    /// Two ends of a socket pair as connections watched by this (living) process's pidfd.
    fn connected_pair() -> (Connection, Connection) {
        answering_pair(None)
    }

    /// [`connected_pair`], the first end answering requests with `answers`.
    fn answering_pair(answers: Option<Requests>) -> (Connection, Connection) {
        let pidfd = Arc::new(pidfd_open(std::process::id()).expect("our own pidfd"));
        let (a, b) = UnixStream::pair().expect("a socket pair");
        let a = Connection::new(a, &pidfd, answers, &Arc::from([])).expect("a connection");
        let b = Connection::new(b, &pidfd, None, &Arc::from([])).expect("a connection");
        (a, b)
    }

    fn client_request(body: &[u8]) -> Vec<Frame> {
        vec![
            wire::header(wire::CLIENT, &[], &[]).into(),
            body.to_vec().into(),
        ]
    }

    #[test]
    fn requests_a_task_sends_are_answered_before_its_reply_is_returned() {
        let answers = Requests(Arc::new(|frames: Vec<Frame>| {
            let Some(Frame::Bytes(body)) = frames.first() else {
                panic!("{frames:?}")
            };
            vec![[b"answer to ".as_slice(), body].concat().into()]
        }));
        let (mut parent, mut worker) = answering_pair(Some(answers));
        let task = std::thread::spawn(move || {
            let call = wire::read_message(&mut worker.replies).expect("the call");
            let mut answers = Vec::new();
            for body in [&b"one"[..], b"two"] {
                worker.send(&client_request(body)).expect("a request");
                answers.push(wire::read_message(&mut worker.replies).expect("its answer"));
            }
            worker.send(&call).expect("the reply: the call echoed");
            answers
        });
        let call = [Frame::from(b"call".to_vec())];
        assert_eq!(parent.exchange(&call).expect("the task's reply"), call);
        let answers = task.join().expect("the task");
        assert_eq!(
            answers,
            [b"answer to one", b"answer to two"].map(|answer| vec![Frame::from(answer.to_vec())])
        );
    }

    #[test]
    fn a_request_to_a_parent_that_answers_none_loses_the_worker() {
        let (mut parent, mut worker) = connected_pair();
        let task = std::thread::spawn(move || {
            wire::read_message(&mut worker.replies).expect("the call");
            worker.send(&client_request(b"one")).expect("a request");
        });
        assert!(matches!(
            parent.exchange(&[Frame::from(b"call".to_vec())]),
            Err(Error::Lost)
        ));
        task.join().expect("the task");
    }

    #[test]
    fn a_segment_crosses_a_socket_as_the_same_memory_not_a_copy() {
        let (mut a, mut b) = connected_pair();
        let segment = Arc::new(wire::Segment::from_bytes(&[5; 1 << 20]).expect("a memfd"));
        // Segments between byte frames, and more than one read's worth of descriptors in a row.
        let mut frames = vec![Frame::from(b"head".to_vec())];
        for _ in 0..10 {
            frames.push(Frame::Segment(Arc::clone(&segment)));
            frames.push(Frame::from(vec![9; 3]));
        }
        let writer = std::thread::spawn(move || {
            wire::write_message(&mut a.requests, &frames)
                .and_then(|()| a.requests.flush())
                .expect("sent");
            frames
        });
        let received = wire::read_message(&mut b.replies).expect("received");
        let sent = writer.join().expect("the writer");
        assert_eq!(received, sent, "every segment is the sender's memory");
        let Frame::Segment(copy) = &received[1] else {
            panic!("{received:?}")
        };
        assert_eq!(copy.to_vec().expect("its bytes"), vec![5; 1 << 20]);
    }

    #[test]
    fn descriptors_of_a_message_cut_short_are_closed_with_the_connection() {
        let (mut a, b) = connected_pair();
        let segment = Arc::new(wire::Segment::from_bytes(b"data").expect("a memfd"));
        let frames = [Frame::Segment(Arc::clone(&segment)), Frame::from(vec![1])];
        wire::write_message(&mut a.requests, &frames).expect("sent");
        a.requests.flush().expect("flushed");
        drop(a);
        // Read up to the segment, then the sender is gone mid-message.
        let mut replies = b.replies;
        let mut count = [0u8; 8];
        replies.read_exact(&mut count).expect("the count");
        let mut rest = Vec::new();
        let _ = replies.read_to_end(&mut rest);
        let received = replies.get_ref().descriptors.front().expect("received");
        let number = received.as_raw_fd();
        let received = wire::Segment::new(received.try_clone().expect("dup")).expect("a segment");
        assert!(received.same_memory(&segment));
        drop(received);
        drop((replies, b.requests));
        // The number may be reused by now, but never for this file: only `segment` holds it.
        if let Ok(file) = std::fs::File::open(format!("/proc/self/fd/{number}")) {
            let reopened = wire::Segment::new(file.into());
            assert!(
                !reopened.is_ok_and(|other| other.same_memory(&segment)),
                "leaked"
            );
        }
    }
}

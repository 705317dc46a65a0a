//! The cluster runner's policy, driven deterministically: in-thread fake workers (a [`Transport`]
//! that runs tasks as Rust closures and keeps values in a map, and dies on command) and a fake
//! codec, with no processes, sockets or sleeps. Each test asserts what happened: which worker ran
//! what, what moved between workers, what was sent once, released, retried or recomputed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use belated_cluster::directory::{Directory, Held};
use belated_cluster::runner::{Encoded, Input, SEND_ONCE_BYTES};
use belated_cluster::wire::{self, Frame, BATCH, FETCH, KEEP, RUN, SAME_FUNCTION, SEND};
use belated_cluster::{Cluster, ClusterRunner, Codec, Error, Transport};
use belated_core::{run_inline_observed, Graph, InputsLost, Observer, Runner, Schedule, TaskId};
use parking_lot::{Condvar, Mutex};

/// A value: a number, and how many bytes it stands for (what moving it costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    n: i64,
    bytes: u64,
}

fn val(n: i64) -> Val {
    Val { n, bytes: 8 }
}

/// A task's function.
type Func = Arc<dyn Fn(&[Val]) -> Result<Val, String> + Send + Sync>;

/// What a task does.
#[derive(Clone)]
enum Op {
    /// A value built in the parent (no call).
    Literal(Val),
    /// A call on the inputs.
    Call(Func),
    /// Kills its worker the first `times` times it runs (then sums its inputs), saying why.
    Dies { times: usize, why: &'static str },
    /// Runs until its worker is killed.
    Blocks,
    /// Runs until its worker is killed the first time it runs (then sums its inputs).
    BlocksOnce,
    /// Sums its inputs, taking longer than its batch may run: its worker replies with what the
    /// batch has done and hands back the calls after it; the call runs, and kills its worker if
    /// `dies`, when the parent waits for its reply.
    Overruns { dies: bool },
}

fn sum(bytes: u64) -> Op {
    Op::Call(Arc::new(move |inputs| {
        Ok(Val {
            n: inputs.iter().map(|v| v.n).sum::<i64>() + 1,
            bytes,
        })
    }))
}

/// A computation: each task's op and inputs.
struct Program {
    ops: Vec<Op>,
    graph: Graph,
}

impl Program {
    fn new(tasks: Vec<(Op, Vec<u32>)>) -> Arc<Self> {
        let graph = Graph::from_deps::<(), _, _>(
            tasks
                .iter()
                .map(|(_, deps)| deps.iter().map(|&d| TaskId(d)).collect::<Vec<_>>()),
        )
        .expect("deps point backwards");
        Arc::new(Program {
            ops: tasks.into_iter().map(|(op, _)| op).collect(),
            graph,
        })
    }

    /// What a plain sequential evaluation gives for `task`.
    fn expected(&self, task: TaskId) -> i64 {
        let inputs: Vec<Val> = self
            .graph
            .deps(task)
            .iter()
            .map(|&d| val(self.expected(d)))
            .collect();
        match &self.ops[task.index()] {
            Op::Literal(v) => v.n,
            Op::Call(f) => f(&inputs).expect("no failing task here").n,
            Op::Dies { .. } | Op::Blocks | Op::BlocksOnce | Op::Overruns { .. } => {
                inputs.iter().map(|v| v.n).sum::<i64>() + 1
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A task started on a worker (at a generation).
    Ran(u32, usize, u64),
    /// A worker replied to a fetch of these ids.
    Fetched(usize, Vec<u64>),
    /// A worker forgot these ids.
    Released(usize, Vec<u64>),
    /// A worker received a batch of this many calls.
    Batch(usize, usize),
}

#[derive(Default)]
struct WorkerState {
    generation: u64,
    dead: Option<String>,
    /// The last generation ended by `Transport::kill`.
    killed: Option<u64>,
    store: HashMap<u64, Val>,
    /// The call of an overrun batch still to run, for the parent's next read: its index in the
    /// batch, result id, flags and frame.
    overran: Option<(u64, u64, u8, [Frame; 2])>,
}

/// Workers that run tasks on the caller's thread and keep values in a map.
struct FakeWorkers {
    program: Arc<Program>,
    directory: Arc<Directory>,
    workers: Vec<(Mutex<WorkerState>, Condvar)>,
    events: Mutex<Vec<Event>>,
    /// Signalled on every event, for a test waiting for one on another thread.
    happened: Condvar,
    runs: Vec<AtomicUsize>,
    replaced: AtomicUsize,
    /// The function frames that reached the workers.
    functions: AtomicUsize,
}

/// A frame's bytes: the fakes send no shared-memory segments.
fn bytes(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Bytes(bytes) => bytes,
        Frame::Segment(_) => panic!("a fake frame is bytes"),
    }
}

fn words(frame: &Frame) -> Vec<u64> {
    bytes(frame)
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .collect()
}

fn frame(words: &[u64]) -> Frame {
    Frame::Bytes(words.iter().flat_map(|w| w.to_le_bytes()).collect())
}

/// The first frame of a call of `op`, naming its function as a pickle would: tasks sharing an
/// op's closure share it.
fn function_frame(op: &Op) -> Frame {
    frame(&[match op {
        Op::Call(f) => Arc::as_ptr(f) as *const () as usize as u64,
        Op::Literal(_) => 1,
        Op::Dies { .. } => 2,
        Op::Blocks => 3,
        Op::BlocksOnce => 4,
        Op::Overruns { .. } => 5,
    }])
}

/// A list of values, as a fetch reply carries them.
fn encode_values(values: &[Val]) -> Vec<Frame> {
    let mut out = vec![values.len() as u64];
    for v in values {
        out.extend([v.n as u64, v.bytes]);
    }
    vec![frame(&out)]
}

fn decode_values(frames: &[Frame]) -> Vec<Val> {
    let w = words(&frames[0]);
    (0..w[0] as usize)
        .map(|i| Val {
            n: w[1 + 2 * i] as i64,
            bytes: w[2 + 2 * i],
        })
        .collect()
}

/// A call's reply: `[1, n, bytes]` and padding as large as the value, or `[0]` and a message.
fn encode_reply(result: &Result<Val, String>) -> Vec<Frame> {
    match result {
        Ok(v) => vec![
            frame(&[1, v.n as u64, v.bytes]),
            vec![0; v.bytes as usize].into(),
        ],
        Err(message) => vec![frame(&[0]), message.as_bytes().to_vec().into()],
    }
}

impl FakeWorkers {
    fn new(program: &Arc<Program>, workers: usize) -> Arc<Self> {
        Arc::new(FakeWorkers {
            program: Arc::clone(program),
            directory: Arc::new(Directory::new(workers)),
            workers: (0..workers).map(|_| Default::default()).collect(),
            events: Mutex::new(Vec::new()),
            happened: Condvar::new(),
            runs: program.ops.iter().map(|_| AtomicUsize::new(0)).collect(),
            replaced: AtomicUsize::new(0),
            functions: AtomicUsize::new(0),
        })
    }

    fn record(&self, event: Event) {
        self.events.lock().push(event);
        self.happened.notify_all();
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// The tasks each run started, as `(task, worker)`.
    fn ran(&self) -> Vec<(u32, usize)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Ran(task, worker, _) => Some((task, worker)),
                _ => None,
            })
            .collect()
    }

    fn kept_by(&self, worker: usize) -> usize {
        self.workers[worker].0.lock().store.len()
    }

    /// Kills worker `worker` (whatever its generation) saying `why`.
    fn die(&self, worker: usize, why: &str) {
        let (state, killed) = &self.workers[worker];
        state.lock().dead = Some(why.to_string());
        killed.notify_all();
    }

    /// Serves a request on the caller's thread.
    fn serve(&self, worker: usize, frames: &[Frame]) -> Result<Vec<Frame>, Error> {
        let header = words(&frames[0]);
        let releases = &header[2..2 + header[1] as usize];
        let rest = &header[2 + releases.len()..];
        let state = &self.workers[worker].0;
        let mut guard = state.lock();
        if !releases.is_empty() {
            for id in releases {
                guard.store.remove(id);
            }
            self.record(Event::Released(worker, releases.to_vec()));
        }
        if header[0] == FETCH {
            let ids = &rest[1..1 + rest[0] as usize];
            let values: Vec<Val> = ids.iter().map(|id| guard.store[id]).collect();
            if !ids.is_empty() {
                self.record(Event::Fetched(worker, ids.to_vec()));
            }
            return Ok(encode_values(&values));
        }
        if header[0] == BATCH {
            let calls = rest[1] as usize;
            assert!(
                rest[0] >= 40_000,
                "a batch may run twice the target at least"
            );
            self.record(Event::Batch(worker, calls));
            let (mut counts, mut replies) = (Vec::new(), Vec::new());
            let (mut next, mut function) = (1, None);
            for (at, call) in rest[2..].chunks_exact(3).enumerate() {
                let (result_id, flags) = (call[0], call[1] as u8);
                if flags & SAME_FUNCTION == 0 {
                    assert_eq!(call[2], 2, "a fake call is its function and its call");
                    function = Some(frames[next].clone());
                    self.functions.fetch_add(1, SeqCst);
                    next += 1;
                } else {
                    assert_eq!(call[2], 1, "the call alone: its function is the one before");
                }
                let call = [
                    function.clone().expect("a function came first"),
                    frames[next].clone(),
                ];
                next += 1;
                let task = words(&call[1])[0] as usize;
                if let Op::Overruns { .. } = self.program.ops[task] {
                    guard.overran = Some((at as u64, result_id, flags, call));
                    let header = wire::batch_reply_header(0, at as u64 + 1, &counts);
                    return Ok(std::iter::once(header.into()).chain(replies).collect());
                }
                let reply = self.call_on(worker, &mut guard, result_id, flags, &call)?;
                counts.push(reply.len() as u64);
                replies.extend(reply);
            }
            let header = wire::batch_reply_header(0, calls as u64, &counts);
            return Ok(std::iter::once(header.into()).chain(replies).collect());
        }
        assert_eq!(header[0], RUN);
        let (result_id, flags, blocks) = (rest[0], rest[1] as u8, rest[2] as usize);
        let (mut at, mut next_frame) = (3, 1);
        for _ in 0..blocks {
            let n = rest[at] as usize;
            let ids = &rest[at + 1..at + 1 + n];
            let count = rest[at + 1 + n] as usize;
            let values = decode_values(&frames[next_frame..next_frame + count]);
            for (id, value) in ids.iter().zip(values) {
                guard.store.insert(*id, value);
            }
            at += n + 2;
            next_frame += count;
        }
        self.functions.fetch_add(1, SeqCst);
        self.call_on(worker, &mut guard, result_id, flags, &frames[next_frame..])
    }

    /// Runs the call in `frames` (its function's, its own) on worker `worker`, whose state is
    /// `guard`.
    fn call_on(
        &self,
        worker: usize,
        guard: &mut parking_lot::MutexGuard<'_, WorkerState>,
        result_id: u64,
        flags: u8,
        frames: &[Frame],
    ) -> Result<Vec<Frame>, Error> {
        let killed = &self.workers[worker].1;
        let call = words(&frames[1]);
        let task = call[0] as usize;
        assert_eq!(
            bytes(&frames[0]),
            bytes(&function_frame(&self.program.ops[task])),
            "task {task} came with another's function"
        );
        let inputs: Vec<Val> = call[2..]
            .chunks_exact(3)
            .map(|input| match input[0] {
                0 => guard.store[&input[1]],
                _ => Val {
                    n: input[1] as i64,
                    bytes: input[2],
                },
            })
            .collect();
        self.record(Event::Ran(task as u32, worker, guard.generation));
        let run = self.runs[task].fetch_add(1, SeqCst);
        let result = match &self.program.ops[task] {
            Op::Call(f) => f(&inputs),
            Op::Literal(v) => Ok(*v),
            Op::Dies { times, why } if run < *times => {
                guard.dead = Some(why.to_string());
                return Err(Error::Lost);
            }
            Op::Dies { .. } => sum(8).call(&inputs),
            Op::BlocksOnce if run > 0 => sum(8).call(&inputs),
            Op::Overruns { dies: true } => {
                guard.dead = Some("it crashed in a slow call".into());
                return Err(Error::Lost);
            }
            Op::Overruns { dies: false } => sum(8).call(&inputs),
            Op::Blocks | Op::BlocksOnce => {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                // A kill may be followed by the replacement (which clears `dead`) before this
                // thread wakes: the generation tells it too.
                let generation = guard.generation;
                while guard.dead.is_none() && guard.generation == generation {
                    assert!(
                        !killed.wait_until(guard, deadline).timed_out(),
                        "a blocked task was never killed"
                    );
                }
                return Err(Error::Lost);
            }
        };
        if let (Ok(value), true) = (&result, flags & KEEP != 0) {
            guard.store.insert(result_id, *value);
        }
        match result {
            Ok(v) if flags & SEND == 0 => Ok(encode_reply(&Ok(val(v.bytes as i64)))),
            result => Ok(encode_reply(&result)),
        }
    }
}

impl Op {
    fn call(&self, inputs: &[Val]) -> Result<Val, String> {
        match self {
            Op::Call(f) => f(inputs),
            _ => unreachable!("only calls are called"),
        }
    }
}

impl Transport for FakeWorkers {
    fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    fn exchange(
        &self,
        worker: usize,
        generation: u64,
        _connection: usize,
        frames: &[Frame],
    ) -> Result<Vec<Frame>, Error> {
        {
            let state = self.workers[worker].0.lock();
            if state.generation != generation || state.dead.is_some() {
                return Err(Error::Lost);
            }
        }
        self.serve(worker, frames)
    }

    fn receive(
        &self,
        worker: usize,
        generation: u64,
        _connection: usize,
    ) -> Result<Vec<Frame>, Error> {
        let mut guard = self.workers[worker].0.lock();
        if guard.generation != generation || guard.dead.is_some() {
            return Err(Error::Lost);
        }
        let (at, result_id, flags, call) = guard.overran.take().expect("a batch overran");
        let reply = self.call_on(worker, &mut guard, result_id, flags, &call)?;
        let header = wire::batch_reply_header(at, at + 1, &[reply.len() as u64]);
        Ok(std::iter::once(header.into()).chain(reply).collect())
    }

    fn kill(&self, worker: usize, generation: u64) {
        if self.workers[worker].0.lock().generation == generation {
            self.workers[worker].0.lock().killed = Some(generation);
            self.die(worker, "it was killed");
        }
    }

    fn killed(&self, worker: usize, generation: u64) -> bool {
        self.workers[worker].0.lock().killed == Some(generation)
    }

    fn replace(&self, worker: usize, generation: u64) -> Result<String, Error> {
        let mut state = self.workers[worker].0.lock();
        if state.generation != generation {
            return Ok("replaced already".into());
        }
        let why = state.dead.take().unwrap_or_else(|| "it was killed".into());
        state.generation += 1;
        state.store.clear();
        self.directory.replaced(worker);
        self.replaced.fetch_add(1, SeqCst);
        Ok(why)
    }
}

#[derive(Debug)]
enum Failure {
    Task(String),
    Runtime(Error),
}

/// Values as the fake workers read them, and a log of the hooks around each task.
struct FakeCodec {
    program: Arc<Program>,
    hooks: Arc<Mutex<Vec<(&'static str, u32)>>>,
    encoded_values: Arc<AtomicUsize>,
    /// Results an earlier computation kept in the workers, by task.
    kept: HashMap<u32, Held<Val>>,
}

impl Codec for FakeCodec {
    type Value = Val;
    type Error = Failure;

    fn encode_call(
        &self,
        task: TaskId,
        inputs: &[Input<'_, Val>],
    ) -> Result<Encoded<Val>, Failure> {
        if let Op::Literal(value) = &self.program.ops[task.index()] {
            return Ok(Encoded::Ready(*value));
        }
        let mut call = vec![u64::from(task.0), inputs.len() as u64];
        for input in inputs {
            call.extend(match input {
                Input::Stored(id) => [0, *id, 0],
                Input::Here(v) => [1, v.n as u64, v.bytes],
            });
        }
        Ok(Encoded::Call(vec![
            function_frame(&self.program.ops[task.index()]),
            frame(&call),
        ]))
    }

    fn encode_value(&self, _task: TaskId, value: &Val) -> Result<Vec<Frame>, Failure> {
        self.encoded_values.fetch_add(1, SeqCst);
        Ok(encode_values(&[*value]))
    }

    fn size(&self, value: &Val) -> Result<u64, Failure> {
        Ok(value.bytes)
    }

    fn decode_value(&self, reply: &[Frame]) -> Result<Val, Failure> {
        let head = words(&reply[0]);
        match head[0] {
            1 => Ok(Val {
                n: head[1] as i64,
                bytes: head[2],
            }),
            _ => Err(Failure::Task(
                String::from_utf8(bytes(&reply[1]).to_vec()).unwrap(),
            )),
        }
    }

    fn decode_fetched(&self, reply: &[Frame]) -> Result<Val, Failure> {
        Ok(decode_values(reply)[0])
    }

    fn decode_size(&self, reply: &[Frame]) -> Result<u64, Failure> {
        self.decode_value(reply).map(|v| v.n as u64)
    }

    fn failed(&self, _task: TaskId, error: Error) -> Failure {
        Failure::Runtime(error)
    }

    fn kept(&self, task: TaskId) -> Option<Held<Val>> {
        self.kept.get(&task.0).cloned()
    }

    fn before(&self, task: TaskId) -> Result<(), Failure> {
        self.hooks.lock().push(("before", task.0));
        Ok(())
    }

    fn after(&self, task: TaskId, _value: Option<&Val>) -> Result<(), Failure> {
        self.hooks.lock().push(("after", task.0));
        Ok(())
    }
}

/// A computation on fake workers, driven one task at a time.
struct Harness {
    program: Arc<Program>,
    workers: Arc<FakeWorkers>,
    cluster: Arc<Cluster<FakeWorkers>>,
    runner: Arc<ClusterRunner<FakeCodec, FakeWorkers>>,
    hooks: Arc<Mutex<Vec<(&'static str, u32)>>>,
    encoded_values: Arc<AtomicUsize>,
    results: Vec<Option<Held<Val>>>,
}

impl Harness {
    fn new(program: &Arc<Program>, workers: usize, outputs: &[u32], retries: usize) -> Self {
        Self::with_threads(program, workers, 1, outputs, retries)
    }

    fn with_threads(
        program: &Arc<Program>,
        workers: usize,
        threads_per_worker: usize,
        outputs: &[u32],
        retries: usize,
    ) -> Self {
        let fakes = FakeWorkers::new(program, workers);
        let cluster = Arc::new(Cluster::new(Arc::clone(&fakes), threads_per_worker));
        Self::on(
            fakes,
            cluster,
            program,
            (outputs, &[]),
            retries,
            HashMap::new(),
        )
    }

    /// A computation whose `outputs` stay in the workers: a persist.
    fn persisting(program: &Arc<Program>, workers: usize, outputs: &[u32]) -> Self {
        let fakes = FakeWorkers::new(program, workers);
        let cluster = Arc::new(Cluster::new(Arc::clone(&fakes), 1));
        Self::on(
            fakes,
            cluster,
            program,
            (outputs, outputs),
            0,
            HashMap::new(),
        )
    }

    /// A later computation of the same program on the same workers, finding the results of `kept`
    /// where this one left them.
    fn later(&self, kept: &[u32], outputs: &[u32], retries: usize) -> Self {
        let kept = kept
            .iter()
            .map(|&t| (t, self.results[t as usize].clone().expect("computed")))
            .collect();
        Self::on(
            Arc::clone(&self.workers),
            Arc::clone(&self.cluster),
            &self.program,
            (outputs, &[]),
            retries,
            kept,
        )
    }

    fn on(
        fakes: Arc<FakeWorkers>,
        cluster: Arc<Cluster<FakeWorkers>>,
        program: &Arc<Program>,
        (outputs, keeping): (&[u32], &[u32]),
        retries: usize,
        kept: HashMap<u32, Held<Val>>,
    ) -> Self {
        let hooks = Arc::default();
        let encoded_values = Arc::default();
        let codec = FakeCodec {
            program: Arc::clone(program),
            hooks: Arc::clone(&hooks),
            encoded_values: Arc::clone(&encoded_values),
            kept,
        };
        let outputs: Vec<TaskId> = outputs.iter().map(|&t| TaskId(t)).collect();
        let keeping: Vec<TaskId> = keeping.iter().map(|&t| TaskId(t)).collect();
        let runner = Arc::new(
            ClusterRunner::new(&cluster, codec, &program.graph, &outputs, retries)
                .keeping(&keeping),
        );
        Harness {
            program: Arc::clone(program),
            workers: fakes,
            cluster,
            runner,
            hooks,
            encoded_values,
            results: program.ops.iter().map(|_| None).collect(),
        }
    }

    fn inputs(&self, task: u32) -> Vec<Held<Val>> {
        self.program
            .graph
            .deps(TaskId(task))
            .iter()
            .map(|d| self.results[d.index()].clone().expect("input computed"))
            .collect()
    }

    /// Runs `task` on worker `worker`'s thread.
    fn run(&mut self, task: u32, worker: usize) -> Result<Option<i64>, Failure> {
        self.try_run(task, worker)
            .expect("a task driven by the harness finds its inputs")
    }

    /// Runs `task` on worker `worker`'s thread; `Err` when the runner reports it lost, for the
    /// engine to run again.
    fn try_run(
        &mut self,
        task: u32,
        worker: usize,
    ) -> Result<Result<Option<i64>, Failure>, InputsLost> {
        let held = match self
            .runner
            .run_on(worker, TaskId(task), &self.inputs(task))?
        {
            Ok(held) => held,
            Err(failure) => return Ok(Err(failure)),
        };
        let local = held.local.map(|v| v.n);
        self.results[task as usize] = Some(held);
        Ok(Ok(local))
    }

    /// Runs the whole program through the engine, inline, telling `seen` what happens.
    fn compute(
        &self,
        outputs: &[u32],
        seen: &Arc<Seen>,
    ) -> Result<Vec<Held<Val>>, belated_core::Error<Failure>> {
        run_inline_observed(
            self.program.graph.clone(),
            outputs.iter().map(|&t| TaskId(t)).collect(),
            Arc::clone(&self.runner),
            Some(Arc::clone(seen) as Arc<dyn Observer>),
        )
    }

    /// Where the runner places `task` now.
    fn place(&self, task: u32) -> Option<usize> {
        let inputs = self.inputs(task);
        self.runner.place(TaskId(task), &mut inputs.iter())
    }

    fn release(&mut self, task: u32) {
        self.results[task as usize] = None;
    }

    /// Runs the whole program through the engine's schedule, the workers taking turns (one task
    /// each per turn), tasks placed by the runner and results released as the schedule says.
    fn simulate(&mut self, outputs: &[u32]) -> Vec<i64> {
        let graph = self.program.graph.clone();
        let outputs: Vec<TaskId> = outputs.iter().map(|&t| TaskId(t)).collect();
        let groups = self.cluster.workers();
        let mut schedule = Schedule::new(&graph, &outputs, groups);
        while !schedule.is_finished() {
            for group in 0..groups {
                let Some(task) = schedule.next_ready(Some(group)) else {
                    continue;
                };
                schedule.start(&graph, task, |_, _| {});
                self.run(task.0, group).expect("the task runs");
                let mut released = Vec::new();
                schedule.finish(
                    &graph,
                    task,
                    |dependent| self.place(dependent.0),
                    |dep| released.push(dep),
                );
                for dep in released {
                    self.release(dep.0);
                }
            }
        }
        outputs
            .iter()
            .map(|t| {
                self.results[t.index()]
                    .as_ref()
                    .and_then(|h| h.local)
                    .expect("outputs come back")
                    .n
            })
            .collect()
    }
}

fn big(bytes: u64) -> Op {
    sum(bytes)
}

#[test]
fn a_task_is_placed_on_the_worker_holding_most_of_its_input_bytes_and_fetches_the_rest() {
    // 0 (large) and 1 (small) each on their own worker; 2 needs both.
    let program = Program::new(vec![
        (big(10_000), vec![]),
        (big(10), vec![]),
        (sum(8), vec![0, 1]),
    ]);
    let mut h = Harness::new(&program, 2, &[2], 0);
    h.run(0, 0).unwrap();
    h.run(1, 1).unwrap();
    assert_eq!(h.place(2), Some(0));
    let id_of_1 = h.results[1].as_ref().unwrap().remote.as_ref().unwrap().id;
    assert_eq!(h.run(2, 0).unwrap(), Some(program.expected(TaskId(2))));
    assert_eq!(
        h.workers.events().last(),
        Some(&Event::Ran(2, 0, 0)),
        "{:?}",
        h.workers.events()
    );
    assert!(h
        .workers
        .events()
        .contains(&Event::Fetched(1, vec![id_of_1])));
    assert_eq!(
        h.cluster.stats().transferred(),
        1,
        "only the small input moved"
    );

    // Moving the large input the other way would have been the costly choice.
    let program = Program::new(vec![
        (big(10), vec![]),
        (big(10_000), vec![]),
        (sum(8), vec![0, 1]),
    ]);
    let mut h = Harness::new(&program, 2, &[2], 0);
    h.run(0, 0).unwrap();
    h.run(1, 1).unwrap();
    assert_eq!(h.place(2), Some(1));
}

#[test]
fn a_value_moved_to_a_worker_is_kept_there_for_later_tasks() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (big(1000), vec![]),
        (sum(8), vec![0, 1]),
        (sum(8), vec![0, 1]),
    ]);
    let mut h = Harness::new(&program, 2, &[2, 3], 0);
    h.run(0, 0).unwrap();
    h.run(1, 1).unwrap();
    h.run(2, 1).unwrap();
    h.run(3, 1).unwrap();
    let fetches: Vec<_> = h
        .workers
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Fetched(..)))
        .collect();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(h.cluster.stats().transferred(), 1);
    assert_eq!(h.workers.kept_by(1), 2, "its own result and the copy");
}

/// A tree's leaves are shared out in runs of neighbours, one per worker, so subtrees meet where
/// they were made: of all the tree's values only one crosses between the two workers.
#[test]
fn runs_of_initial_tasks_keep_subtrees_on_one_worker() {
    // Pairwise reduction of 8 leaves laid out in post-order, as Plan::flatten does.
    fn build(lo: u32, hi: u32, tasks: &mut Vec<(Op, Vec<u32>)>) -> u32 {
        let deps = if hi - lo == 1 {
            vec![]
        } else {
            let mid = (lo + hi) / 2;
            vec![build(lo, mid, tasks), build(mid, hi, tasks)]
        };
        tasks.push((sum(100), deps));
        tasks.len() as u32 - 1
    }
    let mut tasks = Vec::new();
    let root = build(0, 8, &mut tasks);
    let program = Program::new(tasks);
    let mut h = Harness::new(&program, 2, &[root], 0);
    assert_eq!(h.simulate(&[root]), [program.expected(TaskId(root))]);
    let ran = h.workers.ran();
    let on = |worker| {
        ran.iter()
            .filter(|(task, w)| *w == worker && program.graph.deps(TaskId(*task)).is_empty())
            .count()
    };
    assert_eq!((on(0), on(1)), (4, 4), "{ran:?}");
    assert_eq!(h.cluster.stats().transferred(), 1, "{ran:?}");
}

#[test]
fn a_large_value_built_here_is_encoded_once_sent_once_to_each_worker_that_needs_it_and_a_small_one_inline(
) {
    let large = Val {
        n: 5,
        bytes: SEND_ONCE_BYTES,
    };
    let program = Program::new(vec![
        (Op::Literal(large), vec![]),
        (Op::Literal(val(7)), vec![]),
        (sum(8), vec![0, 1]),
        (sum(8), vec![0, 1]),
        (sum(8), vec![0, 1]),
        (sum(8), vec![2, 3, 4]),
    ]);
    let mut h = Harness::new(&program, 2, &[5], 0);
    h.run(0, 0).unwrap();
    h.run(1, 0).unwrap();
    h.run(2, 0).unwrap();
    h.run(3, 0).unwrap();
    h.run(4, 1).unwrap();
    assert_eq!(h.cluster.stats().uploaded(), 2, "once per worker");
    assert_eq!(
        h.encoded_values.load(SeqCst),
        1,
        "encoded once, its frames sent to both workers"
    );
    assert_eq!(h.workers.kept_by(0), 3, "the large value and two results");
    assert_eq!(h.run(5, 0).unwrap(), Some(program.expected(TaskId(5))));
    assert_eq!(
        h.ran_of_literals(),
        0,
        "values built here are never run by a worker"
    );
}

impl Harness {
    fn ran_of_literals(&self) -> usize {
        self.workers
            .ran()
            .iter()
            .filter(|(task, _)| matches!(self.program.ops[*task as usize], Op::Literal(_)))
            .count()
    }
}

/// A task whose worker dies under it is reported lost and the engine runs it again, on the
/// replacement: the observer sees each run start, and each that died end with no result, undone.
#[test]
fn a_task_whose_worker_dies_is_run_again_by_the_engine_up_to_retries_times() {
    let program = Program::new(vec![(
        Op::Dies {
            times: 1,
            why: "it crashed",
        },
        vec![],
    )]);
    let h = Harness::new(&program, 1, &[0], 2);
    let seen = Arc::new(Seen::default());
    let values = h
        .compute(&[0], &seen)
        .expect("run again on the replacement");
    assert_eq!(values[0].local.map(|v| v.n), Some(1));
    assert_eq!(
        *seen.0.lock(),
        [
            ("started", 0),
            ("no result", 0),
            ("undone", 0),
            ("started", 0),
            ("finished", 0),
        ]
    );
    assert_eq!(
        h.workers.events(),
        [Event::Ran(0, 0, 0), Event::Ran(0, 0, 1)]
    );
    let hooks = h.hooks.lock().clone();
    assert_eq!(hooks, [("before", 0), ("before", 0), ("after", 0)]);

    let program = Program::new(vec![(
        Op::Dies {
            times: usize::MAX,
            why: "it crashed again",
        },
        vec![],
    )]);
    let h = Harness::new(&program, 1, &[0], 2);
    let seen = Arc::new(Seen::default());
    match h.compute(&[0], &seen) {
        Err(belated_core::Error::Task {
            task: TaskId(0),
            error: Failure::Runtime(Error::TaskLost { tries, why }),
        }) => {
            assert_eq!(tries, 3, "the first try and two retries");
            assert_eq!(why, "it crashed again");
        }
        other => panic!("{other:?}"),
    }
    let lost_twice = [("started", 0), ("no result", 0), ("undone", 0)].repeat(2);
    let last = [("started", 0), ("no result", 0)];
    assert_eq!(*seen.0.lock(), [&lost_twice[..], &last[..]].concat());
    assert_eq!(h.workers.replaced.load(SeqCst), 3);
}

#[test]
fn a_task_that_raises_is_not_retried_and_its_error_comes_back_as_itself() {
    let program = Program::new(vec![(Op::Call(Arc::new(|_| Err("boom".into()))), vec![])]);
    let mut h = Harness::new(&program, 1, &[0], 3);
    assert!(matches!(h.run(0, 0), Err(Failure::Task(message)) if message == "boom"));
    assert_eq!(h.workers.ran().len(), 1);
    assert_eq!(h.workers.replaced.load(SeqCst), 0);
}

/// A call that raises on its first `failures` runs, naming the run, then sums its inputs.
fn flaky(failures: usize) -> Op {
    let runs = AtomicUsize::new(0);
    Op::Call(Arc::new(move |inputs| {
        let run = runs.fetch_add(1, SeqCst) + 1;
        if run <= failures {
            return Err(format!("boom {run}"));
        }
        Ok(Val {
            n: inputs.iter().map(|v| v.n).sum::<i64>() + 1,
            bytes: 8,
        })
    }))
}

impl Harness {
    fn retrying_errors(mut self, limit: u32) -> Self {
        let runner = Arc::try_unwrap(self.runner).unwrap_or_else(|_| panic!("runner shared"));
        self.runner = Arc::new(runner.retrying_errors(limit));
        self
    }
}

#[test]
fn a_task_that_raises_runs_again_on_the_engine_as_often_as_allowed_and_then_fails_with_its_last_error(
) {
    let program = Program::new(vec![(flaky(2), vec![])]);
    let h = Harness::new(&program, 1, &[0], 0).retrying_errors(2);
    let seen = Arc::new(Seen::default());
    let values = h.compute(&[0], &seen).expect("the third run succeeds");
    assert_eq!(values[0].local.map(|v| v.n), Some(1));
    let failed_run = [("started", 0), ("no result", 0), ("undone", 0)];
    let last = [("started", 0), ("finished", 0)];
    assert_eq!(
        *seen.0.lock(),
        [&failed_run.repeat(2)[..], &last[..]].concat()
    );
    assert_eq!(h.workers.ran().len(), 3);
    assert_eq!(
        h.workers.replaced.load(SeqCst),
        0,
        "a raising task keeps its worker"
    );

    let program = Program::new(vec![(flaky(3), vec![])]);
    let h = Harness::new(&program, 1, &[0], 0).retrying_errors(1);
    match h.compute(&[0], &Arc::default()) {
        Err(belated_core::Error::Task {
            task: TaskId(0),
            error: Failure::Task(message),
        }) => assert_eq!(message, "boom 2", "the last run's error"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.workers.ran().len(), 2);
}

#[test]
fn a_task_of_a_batch_that_raises_runs_again_with_its_inputs_and_the_others_once() {
    let mut tasks: Vec<(Op, Vec<u32>)> = vec![(sum(8), vec![])];
    tasks.extend((1..60).map(|_| (sum(8), vec![0])));
    tasks[40] = (flaky(1), vec![0]);
    let program = Program::new(tasks);
    let outputs: Vec<u32> = (1..60).collect();
    let h = Harness::new(&program, 1, &outputs, 0).retrying_errors(1);
    let values = h
        .compute(&outputs, &Arc::default())
        .expect("every task ran");
    for (task, held) in outputs.iter().zip(values) {
        assert_eq!(held.local.map(|v| v.n), Some(2), "task {task}");
    }
    let events = h.workers.events();
    let batches = events
        .iter()
        .filter(|e| matches!(e, Event::Batch(_, n) if *n > 1));
    assert!(batches.count() > 0, "the tasks went in batches");
    let first_run = events
        .iter()
        .position(|e| matches!(e, Event::Ran(40, ..)))
        .expect("40 ran");
    let batch_at = events[..first_run]
        .iter()
        .rposition(|e| matches!(e, Event::Batch(..)))
        .expect("a batch came first");
    let Event::Batch(_, calls) = events[batch_at] else {
        unreachable!()
    };
    assert!(
        calls > 1 && first_run - batch_at <= calls,
        "40 first ran in a batch of {calls}"
    );
    let runs = |task| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Ran(t, ..) if *t == task))
            .count()
    };
    assert_eq!(runs(40), 2);
    assert!((1..60).filter(|&t| t != 40).all(|t| runs(t) == 1));
}

#[test]
fn a_worker_killed_over_its_memory_limit_is_replaced_and_the_ending_says_why() {
    let why = "it was killed for using 3 GB, over its memory_limit of 2GB";
    let program = Program::new(vec![
        (Op::Dies { times: 1, why }, vec![]),
        (
            Op::Dies {
                times: usize::MAX,
                why,
            },
            vec![],
        ),
    ]);
    let mut h = Harness::new(&program, 1, &[0, 1], 1);
    assert!(matches!(h.try_run(0, 0), Err(InputsLost(lost)) if lost.is_empty()));
    assert_eq!(h.run(0, 0).unwrap(), Some(1), "run again on a fresh worker");
    assert!(matches!(h.try_run(1, 0), Err(InputsLost(lost)) if lost.is_empty()));
    match h.run(1, 0) {
        Err(Failure::Runtime(error @ Error::TaskLost { .. })) => {
            let message = error.to_string();
            assert!(message.contains("failed after 2 tries"), "{message}");
            assert!(message.contains(why), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// What the engine's observer saw, in order.
#[derive(Default)]
struct Seen(Mutex<Vec<(&'static str, u32)>>);

impl Observer for Seen {
    fn task_started(&self, task: TaskId, _worker: Option<usize>) {
        self.0.lock().push(("started", task.0));
    }

    fn task_finished(&self, task: TaskId, _worker: Option<usize>, succeeded: bool) {
        self.0
            .lock()
            .push((if succeeded { "finished" } else { "no result" }, task.0));
    }

    fn task_undone(&self, task: TaskId, _succeeded: bool) {
        self.0.lock().push(("undone", task.0));
    }
}

/// 0 -> 1 -> 2 -> 3 run by the engine on worker 0, and 3 kills that worker the first time it runs,
/// taking 2 with it (0 and 1 were released once consumed). The runner reports 3 lost with its
/// input 2: the engine's schedule recomputes 0, 1 and 2, inputs first, each a task the observer and
/// the hooks see start and finish like any other, and then runs 3 again on the replacement.
#[test]
fn results_lost_with_a_worker_are_recomputed_by_the_engine_which_its_observer_sees() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (sum(8), vec![0]),
        (sum(8), vec![1]),
        (
            Op::Dies {
                times: 1,
                why: "it was killed",
            },
            vec![2],
        ),
    ]);
    let h = Harness::new(&program, 1, &[3], 1);
    let seen = Arc::new(Seen::default());
    let values = run_inline_observed(
        program.graph.clone(),
        vec![TaskId(3)],
        Arc::clone(&h.runner),
        Some(Arc::clone(&seen) as Arc<dyn Observer>),
    )
    .expect("the lost results are recomputed");
    assert_eq!(
        values[0].local.map(|v| v.n),
        Some(program.expected(TaskId(3)))
    );
    assert_eq!(
        *seen.0.lock(),
        [
            ("started", 0),
            ("finished", 0),
            ("started", 1),
            ("finished", 1),
            ("started", 2),
            ("finished", 2),
            ("started", 3),
            ("no result", 3),
            ("undone", 3),
            ("undone", 0),
            ("undone", 1),
            ("undone", 2),
            ("started", 0),
            ("finished", 0),
            ("started", 1),
            ("finished", 1),
            ("started", 2),
            ("finished", 2),
            ("started", 3),
            ("finished", 3),
        ]
    );
    let ran: Vec<Event> = h
        .workers
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Ran(..)))
        .collect();
    assert_eq!(
        ran,
        [0, 1, 2, 3]
            .map(|t| Event::Ran(t, 0, 0))
            .into_iter()
            .chain([0, 1, 2, 3].map(|t| Event::Ran(t, 0, 1)))
            .collect::<Vec<_>>(),
        "the first runs on the first worker, the rest on its replacement"
    );
    assert_eq!(h.cluster.stats().recomputed(), 3);
    assert_eq!(h.workers.replaced.load(SeqCst), 1);
    let hooks = h.hooks.lock().clone();
    let befores = |task| {
        hooks
            .iter()
            .filter(|&&hook| hook == ("before", task))
            .count()
    };
    let afters = |task| {
        hooks
            .iter()
            .filter(|&&hook| hook == ("after", task))
            .count()
    };
    assert_eq!(
        [0, 1, 2, 3].map(|t| (befores(t), afters(t))),
        [(2, 2), (2, 2), (2, 2), (2, 1)],
        "the hooks see each recompute; 3's first run gave no result: {hooks:?}"
    );
}

/// A task that kills its worker every time fails once it ran `retries` + 1 times, its input lost
/// with the worker recomputed by the engine in between.
#[test]
fn a_task_killing_its_worker_every_time_fails_after_retries_and_its_lost_input_is_recomputed() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (
            Op::Dies {
                times: usize::MAX,
                why: "it crashed",
            },
            vec![0],
        ),
    ]);
    let h = Harness::new(&program, 1, &[1], 1);
    let seen = Arc::new(Seen::default());
    match h.compute(&[1], &seen) {
        Err(belated_core::Error::Task {
            task: TaskId(1),
            error: Failure::Runtime(Error::TaskLost { tries, why }),
        }) => assert_eq!((tries, why.as_str()), (2, "it crashed")),
        other => panic!("{other:?}"),
    }
    let ran: Vec<u32> = h.workers.ran().iter().map(|&(task, _)| task).collect();
    assert_eq!(
        ran,
        [0, 1, 0, 1],
        "0 was lost with 1's worker and recomputed before 1 ran again"
    );
}

#[test]
fn a_lost_input_held_in_a_copy_elsewhere_is_fetched_not_recomputed() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (big(1000), vec![]),
        (sum(8), vec![0, 1]),
        (sum(8), vec![0]),
    ]);
    let mut h = Harness::new(&program, 3, &[2, 3], 1);
    h.run(0, 0).unwrap();
    h.run(1, 1).unwrap();
    h.run(2, 1).unwrap(); // worker 1 now holds a copy of 0
    h.workers.die(0, "it was killed");
    // The fetch from the dead worker fails: reported lost, the task's next run fetches the copy.
    assert!(matches!(h.try_run(3, 2), Err(InputsLost(lost)) if lost.is_empty()));
    assert_eq!(h.run(3, 2).unwrap(), Some(program.expected(TaskId(3))));
    assert_eq!(h.cluster.stats().recomputed(), 0);
    assert_eq!(
        h.workers
            .ran()
            .iter()
            .filter(|(task, _)| *task == 0)
            .count(),
        1
    );
    let fetched_from: Vec<usize> = h
        .workers
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Fetched(worker, _) => Some(*worker),
            _ => None,
        })
        .collect();
    assert_eq!(fetched_from, [0, 1], "the copy after the original was lost");
}

#[test]
fn results_nobody_needs_are_released_from_every_worker_holding_them() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (big(1000), vec![]),
        (sum(8), vec![0, 1]),
        (sum(8), vec![2]),
    ]);
    let mut h = Harness::new(&program, 2, &[3], 0);
    assert_eq!(h.simulate(&[3]), [program.expected(TaskId(3))]);
    // Sent back only: the output is not kept.
    h.cluster.flush_releases();
    assert_eq!(
        (h.workers.kept_by(0), h.workers.kept_by(1)),
        (0, 0),
        "{:?}",
        h.workers.events()
    );
    let released: usize = h
        .workers
        .events()
        .iter()
        .map(|e| match e {
            Event::Released(_, ids) => ids.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(
        released as u64,
        3 + h.cluster.stats().transferred(),
        "each kept result and each copy, once"
    );
    let events = h.workers.events().len();
    h.cluster.flush_releases();
    assert_eq!(h.workers.events().len(), events, "nothing left to send");
}

#[test]
fn cancelling_kills_the_worker_running_the_task_and_later_tasks_are_not_sent() {
    let program = Program::new(vec![(Op::Blocks, vec![]), (sum(8), vec![])]);
    let h = Harness::new(&program, 2, &[0, 1], 5);
    let running = Arc::clone(h.runner.running());
    let workers = Arc::clone(&h.workers);
    std::thread::scope(|scope| {
        let blocked = scope.spawn(|| h.runner.run(TaskId(0), &[]));
        let mut events = workers.events.lock();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !events.contains(&Event::Ran(0, 0, 0)) {
            assert!(!workers
                .happened
                .wait_until(&mut events, deadline)
                .timed_out());
        }
        drop(events);
        running.cancel();
        let outcome = blocked.join().expect("no panic");
        assert!(
            matches!(outcome, Err(Failure::Runtime(Error::Cancelled))),
            "{outcome:?}"
        );
    });
    assert_eq!(
        workers.replaced.load(SeqCst),
        1,
        "not retried, but replaced"
    );
    assert!(matches!(
        h.runner
            .run_on(1, TaskId(1), &[])
            .expect("no inputs to lose"),
        Err(Failure::Runtime(Error::Cancelled))
    ));
    assert_eq!(workers.ran(), [(0, 0)], "nothing sent after the cancel");
}

/// Task 0 (which blocks until killed) on `first`'s runner and task 1 (which blocks the first time
/// only) on `second`'s, on the one worker's two threads; `cancel` once both started. Task 0 ends
/// cancelled; task 1 runs again at once on the replacement, neither failed nor reported lost (its
/// worker died for another task: the engine would count a loss against it).
fn cancel_beside(first: &Harness, second: &Harness, cancel: impl FnOnce()) {
    let workers = &first.workers;
    std::thread::scope(|scope| {
        let cancelled = scope.spawn(|| first.runner.run_on(0, TaskId(0), &[]));
        let other = scope.spawn(|| second.runner.run_on(1, TaskId(1), &[]));
        let mut events = workers.events.lock();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !(events.contains(&Event::Ran(0, 0, 0)) && events.contains(&Event::Ran(1, 0, 0))) {
            assert!(!workers
                .happened
                .wait_until(&mut events, deadline)
                .timed_out());
        }
        drop(events);
        cancel();
        let outcome = cancelled.join().expect("no panic");
        assert!(
            matches!(outcome, Ok(Err(Failure::Runtime(Error::Cancelled)))),
            "{outcome:?}"
        );
        let held = other
            .join()
            .expect("no panic")
            .expect("not reported lost")
            .expect("run again, not failed");
        assert_eq!(held.local.map(|v| v.n), Some(1));
    });
}

#[test]
fn another_computations_cancel_kills_a_shared_worker_and_this_ones_task_runs_again_uncounted() {
    for cancel_alone in [true, false] {
        // Computation A's task 0 and computation B's task 1; B has no retries, so a loss counted
        // against its task would fail it.
        let program = Program::new(vec![(Op::Blocks, vec![]), (Op::BlocksOnce, vec![])]);
        let a = Harness::with_threads(&program, 1, 2, &[0], 0);
        let b = a.later(&[], &[1], 0);
        let running = Arc::clone(a.runner.running());
        cancel_beside(&a, &b, || {
            if cancel_alone {
                running.cancel_task(TaskId(0));
            } else {
                running.cancel();
            }
        });
    }
}

#[test]
fn a_task_cancelled_alone_kills_its_worker_and_the_other_task_there_runs_again_uncounted() {
    let program = Program::new(vec![(Op::Blocks, vec![]), (Op::BlocksOnce, vec![])]);
    // No retries: a loss counted against task 1 would fail it.
    let h = Harness::with_threads(&program, 1, 2, &[0, 1], 0);
    let running = Arc::clone(h.runner.running());
    let workers = Arc::clone(&h.workers);
    cancel_beside(&h, &h, || running.cancel_task(TaskId(0)));
    assert!(!running.is_cancelled(), "the computation goes on");
    assert_eq!(workers.replaced.load(SeqCst), 1);
    assert!(
        workers.events().contains(&Event::Ran(1, 0, 1)),
        "task 1 ran again on the replacement"
    );
    assert!(matches!(
        h.runner
            .run_on(0, TaskId(0), &[])
            .expect("no inputs to lose"),
        Err(Failure::Runtime(Error::Cancelled))
    ));
    assert_eq!(
        workers.ran().iter().filter(|(task, _)| *task == 0).count(),
        1,
        "the cancelled task is not sent again"
    );
}

#[test]
fn running_everywhere_calls_each_live_worker_once_and_says_which_one_has_died() {
    let program = Program::new(vec![(sum(8), vec![])]);
    let h = Harness::new(&program, 3, &[0], 0);
    h.workers.die(1, "it segfaulted");
    let call = [function_frame(&program.ops[0]), frame(&[0, 0])];
    let replies = h.cluster.run_everywhere(&call);
    assert_eq!(replies.len(), 3, "a reply per worker, in order");
    assert!(matches!(replies[1], Err(Error::Lost)), "{:?}", replies[1]);
    for worker in [0, 2] {
        let reply = replies[worker].as_ref().expect("a live worker answers");
        assert_eq!(words(&reply[0]), [1, 1, 8], "the call's own result");
    }
    assert_eq!(h.workers.ran(), [(0, 0), (0, 2)]);
    assert_eq!(h.workers.kept_by(0), 0, "a run's result is not kept");
}

/// Tasks handed over together ([`Runner::run_batch`]), as the engine does while tasks are fast.
fn run_batch(h: &Harness, tasks: &[u32]) -> Vec<Result<Option<i64>, Failure>> {
    try_run_batch(h, tasks)
        .into_iter()
        .map(|result| result.expect("no input is lost"))
        .collect()
}

/// [`run_batch`], where the runner may report tasks lost, for the engine to run again.
fn try_run_batch(
    h: &Harness,
    tasks: &[u32],
) -> Vec<Result<Result<Option<i64>, Failure>, InputsLost>> {
    let mut results: Vec<_> = tasks.iter().map(|_| None).collect();
    for (_, group) in settle_batch(h, tasks) {
        for (task, result) in group {
            let at = tasks.iter().position(|&t| t == task).expect("of the batch");
            assert!(
                results[at].replace(result).is_none(),
                "{task} settled twice"
            );
        }
    }
    results
        .into_iter()
        .map(|result| result.expect("every task settled"))
        .collect()
}

/// A task's result as the tests read it.
type Outcome = Result<Result<Option<i64>, Failure>, InputsLost>;

/// The groups in which the runner settles a batch of `tasks`, each with how many of the fake
/// workers' events had happened when it came.
fn settle_batch(h: &Harness, tasks: &[u32]) -> Vec<(usize, Vec<(u32, Outcome)>)> {
    let batch: Vec<(TaskId, Vec<Held<Val>>)> =
        tasks.iter().map(|&t| (TaskId(t), h.inputs(t))).collect();
    let mut groups = Vec::new();
    h.runner.run_batch(batch, &mut |group| {
        let group = group
            .into_iter()
            .map(|(task, result, _)| {
                (
                    task.0,
                    result.map(|result| result.map(|held| held.local.map(|v| v.n))),
                )
            })
            .collect();
        groups.push((h.workers.events().len(), group));
    });
    groups
}

#[test]
fn a_batch_of_tasks_travels_in_one_message_and_each_gets_its_own_result_and_hooks() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (Op::Call(Arc::new(|_| Err("boom".into()))), vec![]),
        (Op::Literal(val(7)), vec![]),
        (sum(8), vec![]),
    ]);
    let h = Harness::new(&program, 1, &[0, 1, 2, 3], 0);
    let results = run_batch(&h, &[0, 1, 2, 3]);
    assert!(matches!(results[0], Ok(Some(n)) if n == program.expected(TaskId(0))));
    assert!(matches!(&results[1], Err(Failure::Task(message)) if message == "boom"));
    assert!(matches!(results[2], Ok(Some(7))), "a literal is made here");
    assert!(matches!(results[3], Ok(Some(n)) if n == program.expected(TaskId(3))));
    let events = h.workers.events();
    assert_eq!(
        events,
        [
            Event::Batch(0, 3),
            Event::Ran(0, 0, 0),
            Event::Ran(1, 0, 0),
            Event::Ran(3, 0, 0)
        ]
    );
    let hooks = h.hooks.lock().clone();
    assert_eq!(
        hooks.iter().filter(|(what, _)| *what == "before").count(),
        4
    );
    assert_eq!(
        hooks
            .iter()
            .filter(|(what, _)| *what == "after")
            .map(|&(_, t)| t)
            .collect::<Vec<_>>(),
        [2, 0, 3],
        "after each task with a result: {hooks:?}"
    );
}

#[test]
fn a_batch_sends_a_function_once_for_the_calls_in_a_row_that_share_it() {
    let (inc, double) = (sum(8), Op::Call(Arc::new(|_| Ok(val(2)))));
    let program = Program::new(vec![
        (inc.clone(), vec![]),
        (inc.clone(), vec![]),
        (double, vec![]),
        (inc.clone(), vec![]),
        (inc, vec![]),
    ]);
    let h = Harness::new(&program, 1, &[0, 1, 2, 3, 4], 0);
    let results = run_batch(&h, &[0, 1, 2, 3, 4]);
    let expected: Vec<_> = (0..5).map(|t| Some(program.expected(TaskId(t)))).collect();
    assert_eq!(
        results
            .into_iter()
            .map(|r| r.ok().flatten())
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(h.workers.events()[0], Event::Batch(0, 5));
    // inc, double, inc: each task ran with its own function (the fake worker checks it).
    assert_eq!(h.workers.functions.load(SeqCst), 3);
    // A task run alone carries its function.
    let alone = Harness::new(&program, 1, &[0], 0);
    let result = alone.runner.run_on(0, TaskId(0), &[]);
    assert!(matches!(result, Ok(Ok(ref held)) if held.local.map(|v| v.n) == expected[0]));
    assert_eq!(alone.workers.functions.load(SeqCst), 1);
}

#[test]
fn a_task_needing_a_value_from_another_worker_leaves_the_batch_and_fetches_it() {
    let program = Program::new(vec![(sum(8), vec![]), (sum(8), vec![0]), (sum(8), vec![])]);
    let mut h = Harness::new(&program, 2, &[1, 2], 0);
    h.run(0, 1).expect("0 runs on worker 1");
    let results = run_batch(&h, &[1, 2]);
    assert!(matches!(results[0], Ok(Some(n)) if n == program.expected(TaskId(1))));
    assert!(matches!(results[1], Ok(Some(n)) if n == program.expected(TaskId(2))));
    let events = h.workers.events();
    assert!(
        matches!(
            &events[..],
            [
                Event::Ran(0, 1, 0),
                Event::Fetched(1, _),
                Event::Ran(1, 0, 0),
                Event::Batch(0, 1),
                Event::Ran(2, 0, 0)
            ]
        ),
        "1 fetched its input from worker 1 and ran alone, then 2 in a batch: {events:?}"
    );
}

#[test]
fn when_a_batch_kills_its_worker_each_of_its_tasks_is_reported_lost_and_runs_next_alone() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (
            Op::Dies {
                times: 1,
                why: "it crashed",
            },
            vec![],
        ),
        (sum(8), vec![]),
        (
            Op::Dies {
                times: usize::MAX,
                why: "it crashed again",
            },
            vec![],
        ),
    ]);
    let h = Harness::new(&program, 1, &[0, 1, 2, 3], 0);
    let lost = |results: &[Result<Result<Option<i64>, Failure>, InputsLost>]| {
        results
            .iter()
            .all(|result| matches!(result, Err(InputsLost(lost)) if lost.is_empty()))
    };
    assert!(lost(&try_run_batch(&h, &[0, 1, 2])), "each to run again");
    // The engine hands them over together again; each runs alone.
    let results = run_batch(&h, &[0, 1, 2]);
    for (task, result) in [0, 1, 2].into_iter().zip(&results) {
        assert!(
            matches!(result, Ok(Some(n)) if *n == program.expected(TaskId(task))),
            "task {task}: {result:?}"
        );
    }
    // 1 killed the worker after 0 ran: none of the batch's results came back, so all three ran
    // again, each alone, on the replacement.
    assert_eq!(
        h.workers
            .events()
            .into_iter()
            .filter(|e| matches!(e, Event::Ran(..) | Event::Batch(..)))
            .collect::<Vec<_>>(),
        [
            Event::Batch(0, 3),
            Event::Ran(0, 0, 0),
            Event::Ran(1, 0, 0),
            Event::Ran(0, 0, 1),
            Event::Ran(1, 0, 1),
            Event::Ran(2, 0, 1),
        ]
    );
    // A task that kills its worker every time fails alone, with no retries, and takes no innocent
    // task of its batch with it.
    assert!(lost(&try_run_batch(&h, &[2, 3])), "each to run again");
    let results = run_batch(&h, &[2, 3]);
    assert!(matches!(results[0], Ok(Some(n)) if n == program.expected(TaskId(2))));
    match &results[1] {
        Err(Failure::Runtime(Error::TaskLost { tries, why })) => {
            assert_eq!(*tries, 1);
            assert_eq!(why, "it crashed again");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_that_overruns_settles_what_it_did_and_hands_back_the_calls_not_started_at_once() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (Op::Overruns { dies: false }, vec![]),
        (sum(8), vec![]),
        (sum(8), vec![]),
    ]);
    let h = Harness::new(&program, 1, &[0, 1, 2, 3], 0);
    let groups = settle_batch(&h, &[0, 1, 2, 3]);
    let events = h.workers.events();
    assert_eq!(
        events,
        [Event::Batch(0, 4), Event::Ran(0, 0, 0), Event::Ran(1, 0, 0)],
        "2 and 3 never ran on this worker"
    );
    let [(seen, first), (_, second)] = &groups[..] else {
        panic!("two groups: {groups:?}")
    };
    assert_eq!(*seen, 2, "the first group came before the slow call ended");
    assert!(
        matches!(
            &first[..],
            [
                (0, Ok(Ok(Some(1)))),
                (2, Err(back2)),
                (3, Err(back3)),
            ] if *back2 == InputsLost::not_started(TaskId(2))
                && *back3 == InputsLost::not_started(TaskId(3))
        ),
        "{first:?}"
    );
    assert!(matches!(&second[..], [(1, Ok(Ok(Some(1))))]), "{second:?}");
}

#[test]
fn a_slow_call_that_kills_its_worker_after_its_batch_overran_is_lost_alone() {
    let program = Program::new(vec![
        (sum(8), vec![]),
        (Op::Overruns { dies: true }, vec![]),
        (sum(8), vec![]),
    ]);
    let h = Harness::new(&program, 1, &[0, 1, 2], 0);
    let groups = settle_batch(&h, &[0, 1, 2]);
    let [(_, first), (_, second)] = &groups[..] else {
        panic!("two groups: {groups:?}")
    };
    assert!(
        matches!(
            &first[..],
            [(0, Ok(Ok(Some(1)))), (2, Err(back))] if *back == InputsLost::not_started(TaskId(2))
        ),
        "{first:?}"
    );
    assert!(
        matches!(&second[..], [(1, Err(InputsLost(none)))] if none.is_empty()),
        "{second:?}"
    );
    assert_eq!(
        h.workers.replaced.load(SeqCst),
        1,
        "its worker was replaced"
    );
    // Handed over together again, 1 runs alone (and kills its worker again), 2 in a batch.
    let before = h.workers.events().len();
    settle_batch(&h, &[1, 2]);
    let events: Vec<Event> = h.workers.events().split_off(before);
    assert_eq!(
        events,
        [Event::Ran(1, 0, 1), Event::Batch(0, 1), Event::Ran(2, 0, 2)]
    );
}

/// Through the engine: a call handed back by a batch that overran goes back to the ready tasks and
/// runs again (the observer sees its first run end without a result, undone), and every task gets
/// its result.
#[test]
fn on_the_engine_the_calls_a_batch_handed_back_run_again_and_every_task_gets_its_result() {
    let mut tasks: Vec<(Op, Vec<u32>)> = (0..40).map(|_| (sum(8), vec![])).collect();
    tasks[5] = (Op::Overruns { dies: false }, vec![]);
    let program = Program::new(tasks);
    let outputs: Vec<u32> = (0..40).collect();
    let h = Harness::new(&program, 1, &outputs, 0);
    let seen = Arc::new(Seen::default());
    let values = h.compute(&outputs, &seen).expect("every task ran");
    for (task, held) in outputs.iter().zip(values) {
        assert_eq!(
            held.local.map(|v| v.n),
            Some(program.expected(TaskId(*task)))
        );
    }
    let handed_back: Vec<u32> = seen
        .0
        .lock()
        .iter()
        .filter(|(what, _)| *what == "undone")
        .map(|&(_, task)| task)
        .collect();
    assert!(!handed_back.is_empty(), "a batch overran at 5");
    assert!(!handed_back.contains(&5), "5 itself ran on");
    let events = h.workers.events();
    for task in handed_back {
        let runs = events
            .iter()
            .filter(|e| matches!(e, Event::Ran(t, ..) if *t == task));
        assert_eq!(runs.count(), 1, "{task} ran once, after it was handed back");
    }
}

#[test]
fn cancelling_a_batch_fails_each_of_its_tasks_as_cancelled() {
    let program = Program::new(vec![(sum(8), vec![]), (Op::Blocks, vec![])]);
    let h = Harness::new(&program, 1, &[0, 1], 0);
    let running = Arc::clone(h.runner.running());
    let workers = Arc::clone(&h.workers);
    let canceller = std::thread::spawn(move || {
        let mut events = workers.events.lock();
        while !events.contains(&Event::Ran(1, 0, 0)) {
            workers.happened.wait(&mut events);
        }
        drop(events);
        running.cancel();
    });
    let results = run_batch(&h, &[0, 1]);
    canceller.join().expect("the canceller");
    for result in results {
        assert!(
            matches!(result, Err(Failure::Runtime(Error::Cancelled))),
            "{result:?}"
        );
    }
}

/// A persist's result, and a later computation's tasks that take it.
fn persisted_and_two_readers() -> Arc<Program> {
    Program::new(vec![
        (big(1000), vec![]),
        (sum(8), vec![0]),
        (sum(8), vec![0]),
    ])
}

fn runs_of(h: &Harness, task: u32) -> usize {
    h.workers.ran().iter().filter(|(t, _)| *t == task).count()
}

#[test]
fn a_persisted_result_stays_in_its_worker_and_later_computations_use_it_where_it_is() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    assert_eq!(persist.run(0, 0).unwrap(), None, "it does not come back");
    assert_eq!(persist.workers.kept_by(0), 1);
    let held = persist.results[0].clone().unwrap();
    let fetched = persist.cluster.fetch_kept(&held).unwrap();
    assert_eq!(
        decode_values(&fetched),
        [Val {
            n: program.expected(TaskId(0)),
            bytes: 1000
        }],
        "computing the persisted value alone fetches it"
    );

    let mut later = persist.later(&[0], &[1, 2], 0);
    assert_eq!(later.run(0, 1).unwrap(), None);
    assert_eq!(
        runs_of(&later, 0),
        1,
        "the kept result is not computed again"
    );
    assert_eq!(later.place(1), Some(0), "its readers go where it is");
    let before = later.workers.events().len();
    assert_eq!(later.run(1, 0).unwrap(), Some(program.expected(TaskId(1))));
    assert!(
        !later.workers.events()[before..]
            .iter()
            .any(|e| matches!(e, Event::Fetched(..))),
        "same worker: nothing moves"
    );
    assert_eq!(later.run(2, 1).unwrap(), Some(program.expected(TaskId(2))));
    assert!(later
        .workers
        .events()
        .contains(&Event::Fetched(0, vec![held.remote.as_ref().unwrap().id])));
    assert_eq!(later.cluster.stats().transferred(), 1);

    // A third computation finds it still there, and the copy the second one made as well.
    let mut third = later.later(&[0], &[2], 0);
    third.run(0, 1).unwrap();
    third.run(2, 1).unwrap();
    assert_eq!(runs_of(&third, 0), 1);
    assert_eq!(
        third.cluster.stats().transferred(),
        1,
        "the copy on 1 is used"
    );
}

#[test]
fn dropping_the_last_handle_of_a_persisted_result_releases_it_and_its_copies_in_the_workers() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    persist.run(0, 0).unwrap();
    let mut later = persist.later(&[0], &[2], 0);
    later.run(0, 1).unwrap();
    later.run(2, 1).unwrap();
    let (workers, cluster) = (Arc::clone(&later.workers), Arc::clone(&later.cluster));
    drop(later);
    cluster.flush_releases();
    assert_eq!(
        (workers.kept_by(0), workers.kept_by(1)),
        (1, 1),
        "the persist's handle still holds the value and its copy"
    );
    drop(persist);
    // A run in every worker (what a test counting their values calls) carries the releases.
    cluster.run_everywhere(&[function_frame(&program.ops[0]), frame(&[0, 0])]);
    assert_eq!(
        (workers.kept_by(0), workers.kept_by(1)),
        (0, 0),
        "{:?}",
        workers.events()
    );
}

#[test]
fn a_cluster_that_releases_promptly_sends_a_release_without_waiting_for_another_request() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    persist.run(0, 0).unwrap();
    let (workers, cluster) = (Arc::clone(&persist.workers), Arc::clone(&persist.cluster));
    cluster.release_promptly().unwrap();
    assert_eq!(workers.kept_by(0) + workers.kept_by(1), 1);
    drop(persist);
    // Nothing else is asked of the workers: only the release thread can carry it. Polled, with a
    // timeout that only ends a broken run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while workers.kept_by(0) + workers.kept_by(1) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            workers.events()
        );
        std::thread::yield_now();
    }
    assert!(
        workers
            .events()
            .iter()
            .any(|event| matches!(event, Event::Released(_, ids) if !ids.is_empty())),
        "{:?}",
        workers.events()
    );
}

#[test]
fn a_fetch_that_finds_the_keeping_worker_dead_replaces_it_and_counts_the_value_lost() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    persist.run(0, 0).unwrap();
    let held = persist.results[0].clone().unwrap();
    let holder = held.remote.as_ref().unwrap().worker;
    persist.workers.die(holder, "it crashed");
    assert!(
        !held.is_lost(persist.workers.directory()),
        "nobody noticed yet"
    );
    assert!(matches!(
        persist.cluster.fetch_kept(&held),
        Err(Error::Lost)
    ));
    assert!(held.is_lost(persist.workers.directory()));
    assert_eq!(
        persist.workers.directory().generation(holder),
        1,
        "replaced"
    );
}

#[test]
fn a_persisted_result_lost_with_its_worker_is_computed_again_from_its_task() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    persist.run(0, 0).unwrap();
    let held = persist.results[0].clone().unwrap();
    persist.workers.die(0, "it crashed");
    persist.workers.replace(0, 0).unwrap();
    assert!(matches!(
        persist.cluster.fetch_kept(&held),
        Err(Error::Lost)
    ));
    let mut later = persist.later(&[0], &[1], 0);
    later.run(0, 1).unwrap();
    assert_eq!(runs_of(&later, 0), 2, "its lineage ran again");
    assert_eq!(later.run(1, 1).unwrap(), Some(program.expected(TaskId(1))));
}

#[test]
fn a_persisted_result_asked_for_alone_is_fetched_from_its_worker_and_not_computed_again() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    persist.run(0, 0).unwrap();
    let id = persist.results[0]
        .as_ref()
        .unwrap()
        .remote
        .as_ref()
        .unwrap()
        .id;
    let mut later = persist.later(&[0], &[0], 0);
    assert_eq!(later.run(0, 1).unwrap(), Some(program.expected(TaskId(0))));
    assert_eq!(runs_of(&later, 0), 1);
    assert_eq!(
        later.workers.events().last(),
        Some(&Event::Fetched(0, vec![id]))
    );
    assert_eq!(
        later.workers.kept_by(1),
        0,
        "fetched here, not copied to a worker"
    );
}

#[test]
fn a_persisted_result_whose_worker_died_unnoticed_is_computed_again_when_fetching_it_fails() {
    let program = persisted_and_two_readers();
    let mut persist = Harness::persisting(&program, 2, &[0]);
    persist.run(0, 0).unwrap();
    persist.workers.die(0, "it crashed");
    let mut later = persist.later(&[0], &[0], 0);
    assert_eq!(later.run(0, 1).unwrap(), Some(program.expected(TaskId(0))));
    assert_eq!(runs_of(&later, 0), 2, "its lineage ran again");
    assert_eq!(
        later.workers.replaced.load(SeqCst),
        1,
        "the dead worker was replaced"
    );
}

//! The inference handle: dedicated engine threads fed through one bounded queue, with dynamic
//! batching.
//!
//! libtorch calls are CPU-bound and may take milliseconds; running them on tokio's workers would
//! stall every other connection. So `std::thread`s own the forward passes and async callers wait
//! on a oneshot reply. The queue is bounded: when it is full the caller gets `Overloaded` (HTTP
//! 429) at once instead of waiting behind an ever-growing backlog.
//!
//! Batching: a free engine thread takes the first waiting request, then every request already
//! queued (and, with a non-zero `max_delay`, those arriving within it) up to `max_batch_series`
//! series, and runs them all in one forward pass. A batch of 64 costs far less than 64 single
//! forwards, so under concurrency the server's throughput grows with the load. With `max_delay`
//! zero nothing waits on purpose: batches form only from requests that queued while the previous
//! batch ran.
//!
//! Several engine threads (`workers`) each run their own forwards, with one intra-op thread each
//! by default. That is how a server uses a second CPU under load: an OpenMP team inside one
//! forward meets at a barrier on each of the LSTM's 336 steps and stalls whenever an HTTP worker
//! preempts one of its members, while independent forwards have nothing to wait for. But only
//! under load: the first engine thread takes every request, and the others (**overflow** threads)
//! wake only when a forward's worth of requests is waiting, then take requests until they find
//! the queue empty. At low concurrency one thread then runs every forward, each taking all that
//! arrived during the last, on a CPU of its own, with the others left to HTTP. Engine threads
//! that take any request they find, or take turns, serve fewer requests at a few clients:
//! forwards move between threads and CPUs and pay for each handover, which costs more than the
//! bigger batches of taking turns save (figures: BENCHMARKS.md, "Overflow engine threads").
//!
//! At low load that layout leaves CPUs idle: a lone request runs on one CPU while the others
//! wait. So a server may also have a **low-latency engine thread**  whose
//! forwards use every CPU. A request goes to it only when nothing else is queued or running, and
//! the last few requests found it so too; it then skips the batching queue, as there is nothing
//! to batch with. Once requests overlap they take the ordinary queue. The low-latency forward and the
//! ordinary ones exclude each other (a read-write gate), so no OpenMP team ever shares the CPUs
//! with another forward, and it is the only thread that ever runs a team, so libgomp's threads
//! never outnumber the CPUs (beyond that it stops spinning at barriers; see
//! `model::engine::oversubscription_warning`). docs/design.md and BENCHMARKS.md have the
//! measurements behind this choice.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock, TryLockError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::forecast::{ForecastResponse, SeriesInput};
use crate::model::{ForecastError, Model};

/// A forecast that succeeded, with where its time went.
#[derive(Debug)]
pub struct ForecastOutcome {
    pub response: ForecastResponse,
    /// Per backtested series: MAE of the forecast from the history's older part against its newest
    /// `horizon` values (original scale).
    pub backtest_mae: Vec<f64>,
    /// Time spent waiting for an engine thread.
    pub queued: Duration,
    /// Preprocessing + forward + restore of the whole batch this request rode in.
    pub inference: Duration,
    /// Windows in that forward pass (this request's and the others').
    pub batch_windows: usize,
    /// Whether the low-latency engine thread answered it: alone, on every CPU.
    pub low_latency: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("the server is at capacity ({capacity} requests queued); retry shortly")]
    Overloaded { capacity: usize },
    #[error("the inference engine has stopped")]
    Stopped,
    #[error("inference panicked; the request was not answered (this is a bug, please report it)")]
    Panicked,
    #[error(transparent)]
    Forecast(#[from] ForecastError),
}

/// How the engine threads group requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most series in one forward pass (a single larger request still runs, alone). 1 disables
    /// batching across requests.
    pub max_batch_series: usize,
    /// How long the first request of a batch may wait for others. Zero: only what is already queued.
    pub max_delay: Duration,
    /// Requests waiting before the engine threads after the first (the overflow threads) take
    /// any; 1: every engine thread takes any request. At most `max_batch_series`.
    pub overflow_depth: usize,
}

impl Batching {
    pub const DISABLED: Batching = Batching {
        max_batch_series: 1,
        max_delay: Duration::ZERO,
        overflow_depth: 1,
    };

    /// A forward's worth of requests. Per series, a forward of 8 already costs far less than a
    /// lone one and not much more than one of 64, on either engine, so an overflow thread woken
    /// at this depth gets most of what batching saves (figures: BENCHMARKS.md,
    /// "Overflow engine threads").
    pub const DEFAULT_OVERFLOW_DEPTH: usize = 8;
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch_series: 64,
            max_delay: Duration::ZERO,
            overflow_depth: Batching::DEFAULT_OVERFLOW_DEPTH,
        }
    }
}

/// The low-latency lane's one-slot queue, and its receiving end with the intra-op threads it runs
/// forwards on; none without `low_latency_threads`.
type LowLatencyLane = (
    Option<SyncSender<Job>>,
    Option<(mpsc::Receiver<Job>, usize)>,
);

fn low_latency_lane(low_latency_threads: Option<usize>) -> LowLatencyLane {
    match low_latency_threads {
        Some(threads) => {
            let (tx, rx) = mpsc::sync_channel(1);
            (Some(tx), Some((rx, threads)))
        }
        None => (None, None),
    }
}

/// The instant [`InferenceHandle::quiet_for`] counts from.
fn clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn micros_since_origin() -> u64 {
    clock_origin().elapsed().as_micros() as u64
}

/// How engine threads compete for the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Normal,
    /// Only CPU time no other thread wants.
    Idle,
}

impl Priority {
    fn apply_to_this_thread(self) {
        if self == Priority::Idle {
            let param = libc::sched_param { sched_priority: 0 };
            // On Linux, pid 0 is the calling thread. Failing leaves it at normal priority, which
            // the shadow's skip-under-load rule still bounds; it is logged, not fatal.
            // SAFETY: sched_setscheduler reads `param` and touches no memory of ours.
            let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if result != 0 {
                tracing::warn!(
                    "could not lower a background engine thread to SCHED_IDLE: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

struct Job {
    series: Vec<SeriesInput>,
    /// Indices of series to backtest (their history holds at least window + horizon rows).
    backtest: Vec<usize>,
    enqueued_at: Instant,
    reply: oneshot::Sender<Result<ForecastOutcome, InferError>>,
}

/// Cloneable handle to the engine threads.
#[derive(Clone)]
pub struct InferenceHandle {
    /// A std sync channel rather than tokio's: an engine thread needs `recv_timeout`, and async
    /// callers only ever `try_send`, which never blocks.
    jobs: SyncSender<Job>,
    /// The model in service. A `RwLock<Arc<_>>` rather than a plain `Arc` so a reload can swap it
    /// while in-flight batches finish on the old one (they hold their own `Arc`).
    model: Arc<RwLock<Arc<Model>>>,
    capacity: usize,
    /// Requests queued and not yet taken by an engine thread.
    depth: Arc<AtomicUsize>,
    /// Cleared when the last engine thread exits.
    alive: Arc<std::sync::atomic::AtomicBool>,
    /// The low-latency engine thread's own one-slot queue, when there is one.
    low_latency: Option<SyncSender<Job>>,
    /// Forwards running, plus a request handed to the low-latency lane and not yet answered: the
    /// low-latency lane takes a request only when this is 0.
    busy: Arc<AtomicUsize>,
    /// Requests in a row that arrived to an idle engine (nothing queued or running).
    idle_arrivals: Arc<AtomicUsize>,
    /// When the last request arrived, in microseconds since [`clock_origin`].
    last_arrival: Arc<AtomicU64>,
    /// Wakes the overflow engine threads; `None` with a single engine thread.
    backlog: Option<Arc<Backlog>>,
    /// Queued requests that wake an overflow engine thread.
    overflow_depth: usize,
}

/// Requests in a row that must find the engine idle before the next idle one takes the low-latency
/// lane. One idle arrival is not enough: with 8 clients every batch's answers go out together,
/// the engine is briefly idle, and the first request back would run on every CPU while the 7 behind
/// it waited for the gate, so the lane would cost throughput at a few clients instead of saving
/// latency on lone requests (figures: BENCHMARKS.md, "Low-latency lane: the idle streak").
const IDLE_ARRIVALS_BEFORE_LOW_LATENCY: usize = 3;

/// Wakes the overflow engine threads when the queue holds a forward's worth, or when the engine
/// stops (the first engine thread found the queue closed and empty).
#[derive(Default)]
struct Backlog {
    /// Whether the engine is stopping.
    stopping: Mutex<bool>,
    changed: Condvar,
}

impl Backlog {
    fn stopping(&self) -> std::sync::MutexGuard<'_, bool> {
        self.stopping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        // Under the lock, so it cannot fall between a waiter's check and its wait.
        let _held = self.stopping();
        self.changed.notify_one();
    }

    fn stop(&self) {
        *self.stopping() = true;
        self.changed.notify_all();
    }

    /// Waits until `depth` reaches `worth` (true) or the engine stops (false).
    fn wait_until_deep(&self, depth: &AtomicUsize, worth: usize) -> bool {
        let mut stopping = self.stopping();
        loop {
            if *stopping {
                return false;
            }
            if depth.load(Ordering::Acquire) >= worth {
                return true;
            }
            stopping = self
                .changed
                .wait(stopping)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// What an ordinary engine thread is to the others.
enum Role {
    /// The only engine thread.
    Alone,
    /// The first of several: takes every request, and stops the overflow threads at the end.
    First(Arc<Backlog>),
    /// Takes requests only once this many wait, until it finds the queue empty.
    Overflow(Arc<Backlog>, usize),
}

/// Keeps a low-latency forward (write) and ordinary forwards (read) from running at once.
type Gate = Arc<RwLock<()>>;

impl InferenceHandle {
    /// Starts one engine thread with the default batching. `queue_capacity` bounds waiting
    /// requests.
    pub fn spawn(model: Model, queue_capacity: usize) -> (Self, std::thread::JoinHandle<()>) {
        Self::spawn_with(model, queue_capacity, Batching::default(), 1)
    }

    /// Starts `workers` engine threads (at least one) that share the queue. The returned handle
    /// joins once all of them have stopped, which they do when every `InferenceHandle` is dropped
    /// and the queue is drained.
    pub fn spawn_with(
        model: Model,
        queue_capacity: usize,
        batching: Batching,
        workers: usize,
    ) -> (Self, std::thread::JoinHandle<()>) {
        Self::spawn_adaptive(model, queue_capacity, batching, workers, None)
    }

    /// Like [`InferenceHandle::spawn_with`], plus, with `low_latency_threads`, a low-latency engine
    /// thread whose forwards use that many intra-op threads (every CPU): it answers a request
    /// that arrives while nothing else is queued or running (see the module docs).
    pub fn spawn_adaptive(
        model: Model,
        queue_capacity: usize,
        batching: Batching,
        workers: usize,
        low_latency_threads: Option<usize>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        Self::spawn_at(
            model,
            queue_capacity,
            batching,
            workers,
            low_latency_threads,
            Priority::Normal,
        )
    }

    /// One engine thread that only ever runs on CPU time nothing else in the machine wants (Linux
    /// `SCHED_IDLE`): for work that must never slow the answers callers wait for, such as a
    /// version forecasting in live's shadow. Its forwards use the calling thread only when
    /// libtorch runs one intra-op thread (`THREADS=1`, `serve`'s default).
    pub fn spawn_background(
        model: Model,
        queue_capacity: usize,
    ) -> (Self, std::thread::JoinHandle<()>) {
        Self::spawn_at(
            model,
            queue_capacity,
            Batching::default(),
            1,
            None,
            Priority::Idle,
        )
    }

    fn spawn_at(
        model: Model,
        queue_capacity: usize,
        batching: Batching,
        workers: usize,
        low_latency_threads: Option<usize>,
        priority: Priority,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let capacity = queue_capacity.max(1);
        let (jobs, rx) = mpsc::sync_channel(capacity);
        let model = Arc::new(RwLock::new(Arc::new(model)));
        let depth = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let gate: Gate = Arc::new(RwLock::new(()));
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        // One receiver, taken in turn: the worker holding it gathers a whole batch, so batches
        // are never split between workers that collect at the same moment.
        let rx = Arc::new(Mutex::new(rx));
        let backlog = (workers > 1).then(|| Arc::new(Backlog::default()));
        // With batching off every engine thread takes any request: there is no batch to grow.
        let overflow_depth = batching
            .overflow_depth
            .clamp(1, batching.max_batch_series.max(1));
        let (low_latency, low_latency_rx) = low_latency_lane(low_latency_threads);
        let worker = {
            let (model, depth, busy, alive, backlog) = (
                Arc::clone(&model),
                Arc::clone(&depth),
                Arc::clone(&busy),
                Arc::clone(&alive),
                backlog.clone(),
            );
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || {
                    let mut threads: Vec<_> = (0..workers.max(1))
                        .map(|i| {
                            let engine = Engine {
                                jobs: Arc::clone(&rx),
                                model: Arc::clone(&model),
                                batching,
                                depth: Arc::clone(&depth),
                                busy: Arc::clone(&busy),
                                gate: Arc::clone(&gate),
                                role: match (&backlog, i) {
                                    (None, _) => Role::Alone,
                                    (Some(backlog), 0) => Role::First(Arc::clone(backlog)),
                                    (Some(backlog), _) => {
                                        Role::Overflow(Arc::clone(backlog), overflow_depth)
                                    }
                                },
                            };
                            std::thread::Builder::new()
                                .name(format!("inference-{i}"))
                                .spawn(move || {
                                    priority.apply_to_this_thread();
                                    run_engine(engine)
                                })
                                .expect("spawning an inference thread")
                        })
                        .collect();
                    if let Some((low_latency, intra_op)) = low_latency_rx {
                        let (model, busy, gate) =
                            (Arc::clone(&model), Arc::clone(&busy), Arc::clone(&gate));
                        threads.push(
                            std::thread::Builder::new()
                                .name("inference-low-latency".into())
                                .spawn(move || {
                                    run_low_latency(low_latency, intra_op, model, busy, gate)
                                })
                                .expect("spawning the low-latency inference thread"),
                        );
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    alive.store(false, Ordering::Release);
                })
                .expect("spawning the inference thread")
        };
        (
            InferenceHandle {
                jobs,
                model,
                capacity,
                depth,
                alive,
                low_latency,
                busy,
                idle_arrivals: Arc::new(AtomicUsize::new(0)),
                last_arrival: Arc::new(AtomicU64::new(0)),
                backlog,
                overflow_depth,
            },
            worker,
        )
    }

    /// Queues a forecast and waits for it. Returns `Overloaded` at once if the queue is full.
    pub async fn forecast(&self, series: Vec<SeriesInput>) -> Result<ForecastOutcome, InferError> {
        self.forecast_with_backtest(series, Vec::new()).await
    }

    /// Like [`InferenceHandle::forecast`], and also backtests the series at `backtest` (indices):
    /// their older windows ride in the same forward pass as the real forecasts.
    pub async fn forecast_with_backtest(
        &self,
        series: Vec<SeriesInput>,
        backtest: Vec<usize>,
    ) -> Result<ForecastOutcome, InferError> {
        self.last_arrival
            .store(micros_since_origin(), Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            series,
            backtest,
            enqueued_at: Instant::now(),
            reply,
        };
        if let Some(low_latency) = &self.low_latency {
            let idle =
                self.depth.load(Ordering::Relaxed) == 0 && self.busy.load(Ordering::Acquire) == 0;
            let streak = if idle {
                self.idle_arrivals.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                self.idle_arrivals.store(0, Ordering::Relaxed);
                0
            };
            // Alone in the process, and lately too: the low-latency lane, on every CPU. `busy`
            // 0 -> 1 claims it.
            if streak > IDLE_ARRIVALS_BEFORE_LOW_LATENCY
                && self
                    .busy
                    .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                match low_latency.try_send(job) {
                    Ok(()) => return answer.await.map_err(|_| InferError::Stopped)?,
                    Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) => {
                        self.busy.fetch_sub(1, Ordering::AcqRel);
                        job = back;
                    }
                }
            }
        }
        let waiting = self.depth.fetch_add(1, Ordering::AcqRel) + 1;
        if let Err(e) = self.jobs.try_send(job) {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                TrySendError::Full(_) => InferError::Overloaded {
                    capacity: self.capacity,
                },
                TrySendError::Disconnected(_) => InferError::Stopped,
            });
        }
        if let Some(backlog) = &self.backlog {
            if waiting >= self.overflow_depth {
                backlog.notify();
            }
        }
        answer.await.map_err(|_| InferError::Stopped)?
    }

    /// Requests waiting for the engine thread.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Forwards running now, plus a request handed to the low-latency engine thread and not yet
    /// answered.
    pub fn forwards_running(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// How long the engine has been idle: nothing queued or running, and no request arrived in
    /// that time. Zero while it works.
    pub fn quiet_for(&self) -> Duration {
        if self.queue_depth() > 0 || self.forwards_running() > 0 {
            return Duration::ZERO;
        }
        let since = micros_since_origin().saturating_sub(self.last_arrival.load(Ordering::Relaxed));
        Duration::from_micros(since)
    }

    /// The model currently in service.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(
            &self
                .model
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Puts a new model in service; requests already running finish on the old one.
    pub fn swap_model(&self, model: Model) -> Arc<Model> {
        let mut slot = self
            .model
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, Arc::new(model))
    }

    /// False once every engine thread has exited.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// What an ordinary engine thread works with.
struct Engine {
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    model: Arc<RwLock<Arc<Model>>>,
    batching: Batching,
    depth: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    gate: Gate,
    role: Role,
}

fn run_engine(engine: Engine) {
    let Engine {
        jobs,
        model,
        batching,
        depth,
        busy,
        gate,
        role,
    } = engine;
    let take = |job: Job| {
        depth.fetch_sub(1, Ordering::Relaxed);
        job
    };
    // A job taken from the queue that did not fit the previous batch: it starts the next one.
    let mut carried: Option<Job> = None;
    // An overflow thread, once woken by a deep queue, keeps taking requests until it finds the
    // queue empty: under sustained load the engine threads share the work evenly, instead of
    // this one waking for each 8 and running small batches beside the first's big ones.
    let mut overflowing = false;
    loop {
        let (batch, left_over) = match carried.take() {
            // Another engine thread may hold the queue while it blocks waiting for a new job; a
            // job already taken must not wait for that, so it gathers company only if the
            // queue is free, and otherwise runs alone.
            Some(first) => match jobs.try_lock() {
                Ok(queue) => gather(first, &queue, batching, &take),
                Err(TryLockError::Poisoned(poisoned)) => {
                    gather(first, &poisoned.into_inner(), batching, &take)
                }
                Err(TryLockError::WouldBlock) => (vec![first], None),
            },
            None => match &role {
                Role::Alone | Role::First(_) => {
                    let queue = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let Ok(first) = queue.recv() else {
                        // Closed and drained: nothing will ever be queued again.
                        if let Role::First(backlog) = &role {
                            backlog.stop();
                        }
                        return;
                    };
                    gather(take(first), &queue, batching, &take)
                }
                Role::Overflow(backlog, worth) => {
                    overflowing &= depth.load(Ordering::Acquire) > 0;
                    if !overflowing && !backlog.wait_until_deep(&depth, *worth) {
                        return;
                    }
                    let queue = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    // Never blocks here: what is not queued now is the first thread's to take.
                    let first = match queue.try_recv() {
                        Ok(first) => first,
                        Err(TryRecvError::Empty) => {
                            overflowing = false;
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => return,
                    };
                    overflowing = true;
                    gather(take(first), &queue, batching, &take)
                }
            },
        };
        carried = left_over;
        busy.fetch_add(1, Ordering::AcqRel);
        let answers = {
            let _beside_other_single_threaded_forwards =
                gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            forecast_batch(&model, batch)
        };
        // Settled before anyone is answered: a client's next request must see this thread idle.
        busy.fetch_sub(1, Ordering::AcqRel);
        send(answers);
    }
}

/// The low-latency engine thread: one request at a time, every forward on `intra_op` threads,
/// never beside another forward.
fn run_low_latency(
    jobs: mpsc::Receiver<Job>,
    intra_op: usize,
    model: Arc<RwLock<Arc<Model>>>,
    busy: Arc<AtomicUsize>,
    gate: Gate,
) {
    crate::model::engine::pin_intra_op_threads_of_this_thread(intra_op);
    while let Ok(job) = jobs.recv() {
        let answers = {
            // An ordinary forward that started just before this request was routed here ends
            // first (a millisecond or so); the ordinary threads then wait for this one.
            let _alone = gate
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            forecast_batch(&model, vec![job])
        };
        // Free before the answer leaves, so the client's next request finds the lane open.
        busy.fetch_sub(1, Ordering::AcqRel);
        send(
            answers
                .into_iter()
                .map(|(reply, outcome)| {
                    let outcome = outcome.map(|o| ForecastOutcome {
                        low_latency: true,
                        ..o
                    });
                    (reply, outcome)
                })
                .collect(),
        );
    }
}

/// Adds to `first` every job already queued (and, with a non-zero `max_delay`, those arriving
/// within it) up to `max_batch_series` series. Returns the batch and the job that did not fit, if
/// one was taken. The caller holds the queue, so no other engine thread splits the batch.
fn gather(
    first: Job,
    queue: &mpsc::Receiver<Job>,
    batching: Batching,
    take: &impl Fn(Job) -> Job,
) -> (Vec<Job>, Option<Job>) {
    let mut batch_series = first.series.len();
    let mut batch = vec![first];
    let deadline = Instant::now() + batching.max_delay;
    while batch_series < batching.max_batch_series {
        let next = match queue.try_recv() {
            Ok(job) => Some(job),
            Err(TryRecvError::Disconnected) => None,
            Err(TryRecvError::Empty) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    None
                } else {
                    queue.recv_timeout(remaining).ok()
                }
            }
        };
        let Some(job) = next.map(take) else { break };
        if batch_series + job.series.len() > batching.max_batch_series {
            // Too big to join this batch: it starts the next one, alone if need be.
            return (batch, Some(job));
        }
        batch_series += job.series.len();
        batch.push(job);
    }
    (batch, None)
}

type Reply = oneshot::Sender<Result<ForecastOutcome, InferError>>;
type Answers = Vec<(Reply, Result<ForecastOutcome, InferError>)>;

fn send(answers: Answers) {
    for (reply, outcome) in answers {
        let _ = reply.send(outcome);
    }
}

/// Runs a batch of requests in one forward pass and returns each one's answer, unsent, so that
/// the caller can settle its own bookkeeping before a client can send its next request. If the
/// merged pass fails (one request's values overflow, say), the requests run one by one so the
/// error reaches only its owner.
fn forecast_batch(model: &Arc<RwLock<Arc<Model>>>, batch: Vec<Job>) -> Answers {
    // A client that hung up while queued does not need its forecast computed.
    let batch: Vec<Job> = batch
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .collect();
    if batch.is_empty() {
        return Vec::new();
    }
    let model = Arc::clone(
        &model
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let started = Instant::now();
    // A panic here must not take the engine thread (and so the whole server) down with it.
    let merged = std::panic::catch_unwind(AssertUnwindSafe(|| forecast_jobs(&model, &batch)));
    match merged {
        Ok(Ok((results, windows))) => {
            let inference = started.elapsed();
            batch
                .into_iter()
                .zip(results)
                .map(|(job, (outputs, backtest_mae))| {
                    let outcome = ForecastOutcome {
                        response: ForecastResponse::from_outputs(
                            model.metadata(),
                            &job.series,
                            outputs,
                        ),
                        backtest_mae,
                        queued: started.saturating_duration_since(job.enqueued_at),
                        inference,
                        batch_windows: windows,
                        low_latency: false,
                    };
                    (job.reply, Ok(outcome))
                })
                .collect()
        }
        Ok(Err(_)) if batch.len() > 1 => batch
            .into_iter()
            .map(|job| forecast_one(&model, job))
            .collect(),
        Ok(Err(e)) => {
            let job = batch.into_iter().next().expect("non-empty");
            vec![(job.reply, Err(InferError::Forecast(e)))]
        }
        Err(_) => batch
            .into_iter()
            .map(|job| (job.reply, Err(InferError::Panicked)))
            .collect(),
    }
}

fn forecast_one(model: &Arc<Model>, job: Job) -> (Reply, Result<ForecastOutcome, InferError>) {
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        forecast_jobs(model, std::slice::from_ref(&job))
    }));
    let outcome = match result {
        Ok(Ok((mut results, windows))) => {
            let (outputs, backtest_mae) = results.remove(0);
            Ok(ForecastOutcome {
                response: ForecastResponse::from_outputs(model.metadata(), &job.series, outputs),
                backtest_mae,
                queued: started.saturating_duration_since(job.enqueued_at),
                inference: started.elapsed(),
                batch_windows: windows,
                low_latency: false,
            })
        }
        Ok(Err(e)) => Err(InferError::Forecast(e)),
        Err(_) => Err(InferError::Panicked),
    };
    (job.reply, outcome)
}

type JobResult = (Vec<crate::model::SeriesOutput>, Vec<f64>);

/// One forward pass for several jobs' forecasts and backtests. Returns per job its forecasts and
/// backtest MAEs, and the number of windows in the pass.
fn forecast_jobs(model: &Model, jobs: &[Job]) -> Result<(Vec<JobResult>, usize), ForecastError> {
    let metadata = model.metadata();
    let features = metadata.input.features.len();
    let target = metadata.target_index().expect("checked at load");
    let held_out = metadata.output.horizon * features;
    let window_len = model.window_len();
    let mut windows: Vec<&[f64]> = Vec::new();
    // Per job: (first forecast index, series count, [(backtest window index, actuals)]).
    let mut layout = Vec::with_capacity(jobs.len());
    for job in jobs {
        let start = windows.len();
        windows.extend(job.series.iter().map(|s| s.window(window_len)));
        layout.push((start, job.series.len(), Vec::new()));
    }
    for (job, (_, _, backtests)) in jobs.iter().zip(layout.iter_mut()) {
        for &i in &job.backtest {
            let Some(history) = job.series.get(i).map(|s| s.values.as_slice()) else {
                continue;
            };
            if history.len() < window_len + held_out {
                continue;
            }
            let end = history.len() - held_out;
            backtests.push((
                windows.len(),
                history[end..]
                    .iter()
                    .skip(target)
                    .step_by(features)
                    .copied()
                    .collect::<Vec<f64>>(),
            ));
            windows.push(&history[end - window_len..end]);
        }
    }
    let total = windows.len();
    let outputs = model.forecast_outputs(&windows)?;
    let results = layout
        .into_iter()
        .map(|(start, count, backtests)| {
            let forecasts = outputs[start..start + count].to_vec();
            let maes = backtests
                .iter()
                .map(|(index, actual)| {
                    let forecast = &outputs[*index].values;
                    forecast
                        .iter()
                        .zip(actual)
                        .map(|(f, a)| (f - a).abs())
                        .sum::<f64>()
                        / actual.len().max(1) as f64
                })
                .collect();
            (forecasts, maes)
        })
        .collect();
    Ok((results, total))
}

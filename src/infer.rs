//! The inference handle: a dedicated engine thread fed through a bounded queue.
//!
//! libtorch calls are CPU-bound and may take milliseconds; running them on tokio's workers would
//! stall every other connection. So one `std::thread` owns the forward passes and async callers
//! wait on a oneshot reply. The queue is bounded: when it is full the caller gets `Overloaded`
//! (HTTP 429) at once instead of waiting behind an ever-growing backlog.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::forecast::{ForecastResponse, SeriesInput};
use crate::model::{ForecastError, Model};

/// A forecast that succeeded, with where its time went.
#[derive(Debug)]
pub struct ForecastOutcome {
    pub response: ForecastResponse,
    /// Time spent waiting for the engine thread.
    pub queued: Duration,
    /// Preprocessing + forward + restore.
    pub inference: Duration,
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

struct Job {
    series: Vec<SeriesInput>,
    enqueued_at: Instant,
    reply: oneshot::Sender<Result<ForecastOutcome, InferError>>,
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct InferenceHandle {
    jobs: mpsc::Sender<Job>,
    /// The model in service. A `RwLock<Arc<_>>` rather than a plain `Arc` so a reload can swap it
    /// while in-flight batches finish on the old one (they hold their own `Arc`).
    model: Arc<RwLock<Arc<Model>>>,
    capacity: usize,
}

impl InferenceHandle {
    /// Starts the engine thread. `queue_capacity` bounds requests waiting for it.
    pub fn spawn(model: Model, queue_capacity: usize) -> (Self, std::thread::JoinHandle<()>) {
        let capacity = queue_capacity.max(1);
        let (jobs, rx) = mpsc::channel(capacity);
        let model = Arc::new(RwLock::new(Arc::new(model)));
        let worker_model = Arc::clone(&model);
        let worker = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run_engine(rx, worker_model))
            .expect("spawning the inference thread");
        (
            InferenceHandle {
                jobs,
                model,
                capacity,
            },
            worker,
        )
    }

    /// Queues a forecast and waits for it. Returns `Overloaded` at once if the queue is full.
    pub async fn forecast(&self, series: Vec<SeriesInput>) -> Result<ForecastOutcome, InferError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            series,
            enqueued_at: Instant::now(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => InferError::Overloaded {
                capacity: self.capacity,
            },
            mpsc::error::TrySendError::Closed(_) => InferError::Stopped,
        })?;
        answer.await.map_err(|_| InferError::Stopped)?
    }

    /// The model currently in service.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.model.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Puts a new model in service; requests already running finish on the old one.
    pub fn swap_model(&self, model: Model) -> Arc<Model> {
        let mut slot = self.model.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, Arc::new(model))
    }

    /// False once the engine thread has exited.
    pub fn is_alive(&self) -> bool {
        !self.jobs.is_closed()
    }
}

fn run_engine(mut jobs: mpsc::Receiver<Job>, model: Arc<RwLock<Arc<Model>>>) {
    while let Some(job) = jobs.blocking_recv() {
        // A client that hung up while queued does not need its forecast computed.
        if job.reply.is_closed() {
            continue;
        }
        let queued = job.enqueued_at.elapsed();
        let model = Arc::clone(&model.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let started = Instant::now();
        // A panic here must not take the engine thread (and so the whole server) down with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let windows: Vec<&[f64]> = job.series.iter().map(|s| s.values.as_slice()).collect();
            model.forecast(&windows)
        }));
        let outcome = match result {
            Ok(Ok(outputs)) => Ok(ForecastOutcome {
                response: ForecastResponse::new(model.metadata(), &job.series, outputs),
                queued,
                inference: started.elapsed(),
            }),
            Ok(Err(e)) => Err(InferError::Forecast(e)),
            Err(_) => Err(InferError::Panicked),
        };
        let _ = job.reply.send(outcome);
    }
}

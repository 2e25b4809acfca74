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
    /// Per backtested series: MAE of the forecast from the history's older part against its newest
    /// `horizon` values (original scale).
    pub backtest_mae: Vec<f64>,
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
    /// Indices of series to backtest (their history holds at least window + horizon rows).
    backtest: Vec<usize>,
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
        self.forecast_with_backtest(series, Vec::new()).await
    }

    /// Like [`InferenceHandle::forecast`], and also backtests the series at `backtest` (indices):
    /// their older windows ride in the same forward pass as the real forecasts.
    pub async fn forecast_with_backtest(
        &self,
        series: Vec<SeriesInput>,
        backtest: Vec<usize>,
    ) -> Result<ForecastOutcome, InferError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            series,
            backtest,
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
        let model = Arc::clone(
            &model
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let started = Instant::now();
        // A panic here must not take the engine thread (and so the whole server) down with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| forecast_job(&model, &job)));
        let outcome = match result {
            Ok(Ok((outputs, backtest_mae))) => Ok(ForecastOutcome {
                response: ForecastResponse::new(model.metadata(), &job.series, outputs),
                backtest_mae,
                queued,
                inference: started.elapsed(),
            }),
            Ok(Err(e)) => Err(InferError::Forecast(e)),
            Err(_) => Err(InferError::Panicked),
        };
        let _ = job.reply.send(outcome);
    }
}

/// One forward pass for the job's forecasts and its backtests.
fn forecast_job(model: &Model, job: &Job) -> Result<(Vec<Vec<f64>>, Vec<f64>), ForecastError> {
    let metadata = model.metadata();
    let features = metadata.input.features.len();
    let target = metadata.target_index().expect("checked at load");
    let horizon = metadata.output.horizon;
    let window_len = model.window_len();
    let mut windows: Vec<&[f64]> = job.series.iter().map(|s| s.window(window_len)).collect();
    let mut actuals = Vec::new();
    for &i in &job.backtest {
        let Some(history) = job.series.get(i).map(|s| s.values.as_slice()) else {
            continue;
        };
        let held_out = horizon * features;
        if history.len() < window_len + held_out {
            continue;
        }
        let end = history.len() - held_out;
        windows.push(&history[end - window_len..end]);
        actuals.push(
            history[end..]
                .iter()
                .skip(target)
                .step_by(features)
                .copied()
                .collect::<Vec<f64>>(),
        );
    }
    let mut outputs = model.forecast(&windows)?;
    let backtests = outputs.split_off(job.series.len());
    let backtest_mae = backtests
        .iter()
        .zip(&actuals)
        .map(|(f, a)| {
            f.iter().zip(a).map(|(f, a)| (f - a).abs()).sum::<f64>() / a.len().max(1) as f64
        })
        .collect();
    Ok((outputs, backtest_mae))
}

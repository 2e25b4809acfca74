//! The engine port: something that maps a normalised batch to normalised forecasts.
//!
//! The trait is deliberately tiny (one call, plain slices) so that tests and the second engine
//! (ONNX Runtime, `super::onnx`) do not depend on tch types.

use std::cell::Cell;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Runs the network on one batch.
pub trait Engine: Send + Sync {
    /// `input` is row-major `[batch, window, features]`; returns row-major `[batch, horizon]`
    /// (`[batch, horizon, quantiles]` for a quantile network).
    fn forward(
        &self,
        input: &[f32],
        batch: usize,
        window: usize,
        features: usize,
    ) -> Result<Vec<f32>, EngineError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("libtorch could not load model.pt: {0}")]
    Load(String),
    #[error("libtorch forward failed: {0}")]
    Forward(String),
    #[error("ONNX Runtime cannot be opened ({0}); point ORT_DYLIB_PATH at libonnxruntime.so")]
    OnnxRuntimeMissing(String),
    #[error("ONNX Runtime could not load model.onnx: {0}")]
    OnnxLoad(String),
    #[error("ONNX Runtime forward failed: {0}")]
    OnnxForward(String),
    #[error("the network returned shape {actual:?}, expected {expected:?} (output.horizon, and output.quantiles if any, in model.json)")]
    OutputShape {
        actual: Vec<i64>,
        expected: Vec<i64>,
    },
}

/// TorchScript on CPU via tch.
pub struct TorchEngine {
    module: tch::CModule,
    /// The output's shape after the batch: `[horizon]` or `[horizon, quantiles]`.
    per_series: Vec<i64>,
}

impl TorchEngine {
    /// Loads TorchScript from memory (an S3 body or an embedded file need no temporary file).
    pub fn load(model_pt: &[u8], horizon: usize) -> Result<Self, EngineError> {
        Self::load_with_output(model_pt, &[horizon])
    }

    /// [`TorchEngine::load`] for a network whose output per series has the shape `per_series`
    /// (`[horizon, quantiles]` for a quantile network).
    pub fn load_with_output(model_pt: &[u8], per_series: &[usize]) -> Result<Self, EngineError> {
        let mut module =
            tch::CModule::load_data_on_device(&mut Cursor::new(model_pt), tch::Device::Cpu)
                .map_err(|e| EngineError::Load(first_line(&e.to_string())))?;
        module.set_eval();
        Ok(TorchEngine {
            module,
            per_series: per_series.iter().map(|&d| d as i64).collect(),
        })
    }
}

impl Engine for TorchEngine {
    fn forward(
        &self,
        input: &[f32],
        batch: usize,
        window: usize,
        features: usize,
    ) -> Result<Vec<f32>, EngineError> {
        adopt_intra_op_threads();
        let _no_grad = tch::no_grad_guard();
        let forward_error = |e: tch::TchError| EngineError::Forward(first_line(&e.to_string()));
        let padded = padded_batch(batch);
        let x = if padded == batch {
            tch::Tensor::from_slice(input)
        } else {
            let mut rows = Vec::with_capacity(padded * window * features);
            rows.extend_from_slice(input);
            rows.resize(padded * window * features, 0.0);
            tch::Tensor::from_slice(&rows)
        };
        let x = x
            .f_view([padded as i64, window as i64, features as i64])
            .map_err(forward_error)?;
        let y = self.module.forward_ts(&[x]).map_err(forward_error)?;
        let size = y.size();
        let expected = output_shape(padded, &self.per_series);
        if size != expected {
            return Err(EngineError::OutputShape {
                actual: size,
                expected,
            });
        }
        let y = y.f_narrow(0, 0, batch as i64).map_err(forward_error)?;
        let y = y
            .f_to_kind(tch::Kind::Float)
            .map_err(forward_error)?
            .f_contiguous()
            .map_err(forward_error)?;
        let flat = y.f_view([-1]).map_err(forward_error)?;
        Vec::<f32>::try_from(&flat).map_err(forward_error)
    }
}

/// The shape a network must return for `batch` series: `[batch, per_series...]`.
pub(super) fn output_shape(batch: usize, per_series: &[i64]) -> Vec<i64> {
    std::iter::once(batch as i64)
        .chain(per_series.iter().copied())
        .collect()
}

/// Batches above this size are padded to a multiple of it.
const BATCH_SIZE_STEP: usize = 8;

/// The batch size a forward really runs at. oneDNN compiles and caches kernels for every batch
/// size it meets, several per size for a 2-layer LSTM. Padding to a multiple of 8 above 8 leaves
/// 15 sizes up to 64 instead of 64, so the kernels fit the cache instead of being recompiled over
/// and over, and the cache stays small. The padding rows are zeros, and the LSTM keeps the rows
/// of a batch apart, so the real rows' answers are those of an unpadded forward.
fn padded_batch(batch: usize) -> usize {
    if batch <= BATCH_SIZE_STEP {
        batch
    } else {
        batch.div_ceil(BATCH_SIZE_STEP) * BATCH_SIZE_STEP
    }
}

/// libtorch messages carry a C++ backtrace after the first line; logs and HTTP errors want the
/// first line only.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

/// What else runs on the CPUs while a forward does; it decides the default intra-op threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `serve`: HTTP workers parse and answer requests while a forward
    /// runs. The LSTM's OpenMP team meets at a barrier on each of its 336 steps, so a team member
    /// preempted by an HTTP worker stalls the whole forward, and a single series gains little
    /// from a second thread anyway. So each forward gets one thread, and a server uses more CPUs
    /// by running more forwards side by side ([`default_engine_workers`]): independent forwards
    /// have no barrier to wait at, so they serve more requests than one forward with a team of
    /// every CPU, at few clients as at many. (Figures: BENCHMARKS.md,
    /// "Engine threads and intra-op threads".)
    Serving,
    /// One forward at a time with nothing else to do meanwhile, so every CPU goes to it: one-off
    /// commands (`forecast`, `evaluate`) and the Lambda function, which handles one invocation at
    /// a time (its async workers wait for the forward). With no HTTP worker to preempt the team,
    /// a scheduled batch of 64 series finishes markedly sooner on every CPU than on one.
    /// (Figures: BENCHMARKS.md, "Engine threads and intra-op threads".)
    OneAtATime,
}

/// Intra-op threads when the operator has not chosen: see [`Workload`].
pub fn default_intra_op_threads(workload: Workload, cpus: usize) -> usize {
    match workload {
        Workload::Serving => 1,
        Workload::OneAtATime => cpus.max(1),
    }
}

/// Engine threads of a server when the operator has not chosen: one per CPU, each running its
/// own forwards with [`default_intra_op_threads`] of them, so that under load the forwards
/// together use every CPU without an OpenMP barrier between them. At low load only the first
/// runs (the others overflow threads, see `infer`), and HTTP has the other CPUs.
pub fn default_engine_workers(cpus: usize) -> usize {
    cpus.max(1)
}

/// libgomp spins at a barrier only while the OpenMP threads it manages (every team, on every
/// thread that ever ran a parallel region, idle or not) are no more than the CPUs. Beyond that it
/// sleeps in the kernel at each barrier, and a forward with ~1,000 barriers pays a wake-up at
/// every one of them, so it slows down many times over (figures: BENCHMARKS.md,
/// "OpenMP threads beyond the CPUs"). Returns a warning when a configuration would do that.
pub fn oversubscription_warning(
    workers: usize,
    intra_op_threads: usize,
    cpus: usize,
) -> Option<String> {
    let openmp_threads = workers * intra_op_threads;
    (intra_op_threads > 1 && openmp_threads > cpus).then(|| {
        format!(
            "{workers} engine threads x {intra_op_threads} intra-op threads = {openmp_threads} OpenMP threads on {cpus} CPUs: \
             libgomp stops spinning at barriers when its threads outnumber the CPUs, and every forward \
             slows down many times; keep engine threads x intra-op threads <= CPUs"
        )
    })
}

/// Process-wide libtorch settings, applied once before any JIT code runs. Returns the intra-op
/// thread count in effect.
///
/// - Intra-op threads: `None` uses [`default_intra_op_threads`] of [`available_cpus`]. libtorch's
///   inter-op pool is left alone: a TorchScript forward of this model has nothing to run in
///   parallel inside it, and a server runs forwards in parallel on its own engine threads.
/// - The JIT's profiling executor is turned off. It re-optimises the graph over the first calls,
///   which makes the first forecasts several times slower, and a steady-state forward of this
///   model is no faster with it (figures: BENCHMARKS.md, "JIT profiling executor").
pub fn configure_libtorch(requested_threads: Option<usize>, workload: Workload) -> usize {
    static ONCE: Once = Once::new();
    let threads = requested_threads
        .unwrap_or_else(|| default_intra_op_threads(workload, available_cpus()))
        .max(1);
    ONCE.call_once(|| {
        INTRA_OP_THREADS.store(threads, Ordering::Relaxed);
        tch::jit::set_profiling_mode(false);
    });
    adopt_intra_op_threads();
    tch::get_num_threads().max(1) as usize
}

/// The intra-op threads each forward adopts; 0 before [`configure_libtorch`] runs.
pub fn configured_intra_op_threads() -> usize {
    INTRA_OP_THREADS.load(Ordering::Relaxed)
}

/// CPUs this process may really use: std honours sched affinity and cgroup v1/v2 CPU quotas
/// (a container limited to 1.5 CPUs gets 1), which is what ECS, Kubernetes and Lambda set.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The intra-op thread count [`configure_libtorch`] chose; 0 until it runs.
static INTRA_OP_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ADOPTED_INTRA_OP_THREADS: Cell<usize> = const { Cell::new(0) };
    /// This thread's own count, set by [`pin_intra_op_threads_of_this_thread`]; 0: the configured one.
    static PINNED_INTRA_OP_THREADS: Cell<usize> = const { Cell::new(0) };
}

/// Gives every forward this thread runs `threads` intra-op threads, whatever
/// [`configure_libtorch`] chose for the others: the server's low-latency engine thread
/// (`crate::infer`) runs lone requests on every CPU while the other engine threads stay at one.
/// OpenMP keeps the count per thread, so set once it never changes: oneDNN keys its kernel cache
/// by thread count, and a thread that switched back and forth would compile kernels for both.
pub fn pin_intra_op_threads_of_this_thread(threads: usize) {
    PINNED_INTRA_OP_THREADS.with(|pinned| pinned.set(threads.max(1)));
    adopt_intra_op_threads();
}

/// libtorch's thread count is OpenMP's, and OpenMP keeps it per calling thread: a thread that
/// never set it runs oneDNN with one OpenMP thread per CPU, whatever `configure_libtorch` said.
/// Engine threads are not the thread that configured libtorch, so every forward adopts the
/// configured count (or its thread's pinned one) on its own thread first (once per thread).
fn adopt_intra_op_threads() {
    let pinned = PINNED_INTRA_OP_THREADS.with(Cell::get);
    let wanted = if pinned > 0 {
        pinned
    } else {
        INTRA_OP_THREADS.load(Ordering::Relaxed)
    };
    if wanted == 0 {
        return;
    }
    ADOPTED_INTRA_OP_THREADS.with(|adopted| {
        if adopted.get() != wanted {
            tch::set_num_threads(wanted as i32);
            adopted.set(wanted);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_runs_one_single_threaded_forward_per_cpu_and_a_batch_job_gives_one_forward_every_cpu(
    ) {
        for cpus in [1, 2, 8] {
            assert_eq!(default_intra_op_threads(Workload::Serving, cpus), 1);
            assert_eq!(default_engine_workers(cpus), cpus);
        }
        assert_eq!(default_intra_op_threads(Workload::OneAtATime, 2), 2);
        assert_eq!(default_intra_op_threads(Workload::OneAtATime, 0), 1);
        assert_eq!(default_engine_workers(0), 1);
    }

    #[test]
    fn more_openmp_threads_than_cpus_is_warned_about_and_single_threaded_forwards_never_are() {
        assert_eq!(oversubscription_warning(2, 1, 2), None);
        assert_eq!(
            oversubscription_warning(8, 1, 2),
            None,
            "no team, no barrier"
        );
        assert_eq!(oversubscription_warning(1, 2, 2), None);
        let warning = oversubscription_warning(2, 2, 2).expect("4 OpenMP threads on 2 CPUs");
        assert!(warning.contains("4 OpenMP threads on 2 CPUs"), "{warning}");
    }

    /// What oneDNN will use: OpenMP's per-thread maximum, read straight from libgomp (libtorch's
    /// own `get_num_threads` would first initialise the calling thread and hide the problem).
    fn openmp_max_threads_of_this_thread() -> i32 {
        // SAFETY: dlsym on the process's global scope; the symbol, when present, is libgomp's
        // `int omp_get_max_threads(void)`.
        unsafe {
            let symbol = libc::dlsym(libc::RTLD_DEFAULT, c"omp_get_max_threads".as_ptr());
            assert!(!symbol.is_null(), "libgomp is not loaded");
            let omp_get_max_threads: extern "C" fn() -> libc::c_int = std::mem::transmute(symbol);
            omp_get_max_threads()
        }
    }

    #[test]
    fn a_forward_on_a_new_thread_runs_with_the_configured_intra_op_threads() {
        // Only this test configures libtorch in the unit-test process. One thread differs from
        // OpenMP's default (one per CPU) on any machine with more than one CPU.
        let configured = configure_libtorch(Some(1), Workload::OneAtATime);
        assert_eq!(configured, 1);
        let engine = TorchEngine::load(crate::source::BUNDLED_MODEL_PT, 24).unwrap();
        let threads_seen_by_the_forward = std::thread::spawn(move || {
            engine.forward(&vec![0.0; 168], 1, 168, 1).unwrap();
            openmp_max_threads_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(threads_seen_by_the_forward, 1);
        // A thread that pins its own count keeps it for its forwards; the others keep theirs.
        let engine = std::sync::Arc::new(engine_for_threads_test());
        let pinned = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                pin_intra_op_threads_of_this_thread(2);
                engine.forward(&vec![0.0; 168], 1, 168, 1).unwrap();
                openmp_max_threads_of_this_thread()
            })
            .join()
            .unwrap()
        };
        let other = std::thread::spawn(move || {
            engine.forward(&vec![0.0; 168], 1, 168, 1).unwrap();
            openmp_max_threads_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!((pinned, other), (2, 1));
    }

    fn engine_for_threads_test() -> TorchEngine {
        TorchEngine::load(crate::source::BUNDLED_MODEL_PT, 24).unwrap()
    }

    #[test]
    fn batches_above_eight_run_at_the_next_multiple_of_eight_so_at_most_15_sizes_reach_64() {
        assert_eq!(
            (1..=8).map(padded_batch).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(padded_batch(9), 16);
        assert_eq!(padded_batch(16), 16);
        assert_eq!(padded_batch(57), 64);
        let sizes: std::collections::BTreeSet<usize> = (1..=64).map(padded_batch).collect();
        assert_eq!(sizes.len(), 15);
    }

    #[test]
    fn a_padded_batch_answers_each_window_as_it_is_answered_alone() {
        let engine = TorchEngine::load(crate::source::BUNDLED_MODEL_PT, 24).unwrap();
        // 9 windows run as 16; each must still get its own forecast, not a neighbour's or a pad's.
        let windows: Vec<Vec<f32>> = (0..9)
            .map(|w| {
                (0..168)
                    .map(|t| ((t * (w + 1)) as f32 * 0.01).sin() - 0.1 * w as f32)
                    .collect()
            })
            .collect();
        let batched = engine.forward(&windows.concat(), 9, 168, 1).unwrap();
        assert_eq!(batched.len(), 9 * 24);
        for (w, window) in windows.iter().enumerate() {
            let alone = engine.forward(window, 1, 168, 1).unwrap();
            for (got, want) in batched[w * 24..(w + 1) * 24].iter().zip(&alone) {
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "window {w}: {got} vs {want}"
                );
            }
        }
    }
}

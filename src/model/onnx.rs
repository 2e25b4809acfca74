//! ONNX Runtime as the engine for every forward, when the model ships `model.onnx`.
//!
//! Why a second engine: ONNX Runtime runs the bundled LSTM faster than libtorch at every batch
//! size from a lone series to a full batch, one intra-op thread each (`BENCH_ONLY=engines make
//! bench`; figures: BENCHMARKS.md, "ONNX Runtime against libtorch"). libtorch stays the reference:
//! [`crate::model::Model`] checks the two agree at warm-up, and answers on libtorch alone when
//! the model has no `model.onnx` or the runtime library cannot be opened.
//!
//! The runtime library is opened at run time (`dlopen`), so the binary builds, and serves on
//! libtorch alone, without it: `ORT_DYLIB_PATH` names the file, otherwise `libonnxruntime.so` is
//! looked up like any shared library, the binary's rpath first (`.onnxruntime/lib` in a checkout,
//! `../lib` beside the binary in the container image).
//!
//! Sessions run on the calling engine thread (one intra-op thread, no spinning): the server already
//! runs one engine thread per CPU, and a thread pool of ONNX Runtime's own would compete with them
//! (and with libgomp's teams, when libtorch runs) for the same CPUs.

use std::sync::{Mutex, OnceLock, TryLockError};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::engine::{available_cpus, output_shape, Engine, EngineError};

/// Where the runtime library is taken from when `ORT_DYLIB_PATH` is unset.
const DEFAULT_LIBRARY: &str = "libonnxruntime.so";

/// ONNX Runtime sessions of one model, one per CPU so that engine threads running forwards side
/// by side never queue behind each other (a session runs one call at a time).
pub struct OnnxEngine {
    sessions: Vec<Mutex<Session>>,
    /// The output's shape after the batch: `[horizon]` or `[horizon, quantiles]`.
    per_series: Vec<i64>,
}

impl OnnxEngine {
    /// Opens the runtime library (once per process) and builds the sessions from `model.onnx`.
    pub fn load(model_onnx: &[u8], per_series: &[usize]) -> Result<Self, EngineError> {
        let environment = runtime()?;
        let sessions = (0..available_cpus())
            .map(|_| new_session(environment, model_onnx).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(OnnxEngine {
            sessions,
            per_series: per_series.iter().map(|&d| d as i64).collect(),
        })
    }

    /// The first free session, or, when every one is busy, a wait for the first.
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        for session in &self.sessions {
            match session.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            }
        }
        self.sessions[0]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Engine for OnnxEngine {
    fn forward(
        &self,
        input: &[f32],
        batch: usize,
        window: usize,
        features: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let forward_error = |e: ort::Error| EngineError::OnnxForward(e.to_string());
        let x = TensorRef::from_array_view(([batch, window, features], input))
            .map_err(forward_error)?;
        let mut session = self.session();
        let outputs = session.run(ort::inputs![x]).map_err(forward_error)?;
        let (shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(forward_error)?;
        let expected = output_shape(batch, &self.per_series);
        if shape.as_ref() != expected.as_slice() {
            return Err(EngineError::OutputShape {
                actual: shape.to_vec(),
                expected,
            });
        }
        Ok(values.to_vec())
    }
}

/// Opens the runtime library and creates its environment, once per process; every later call
/// returns the first outcome.
fn runtime() -> Result<&'static Environment, EngineError> {
    static OPENED: OnceLock<Result<Environment, String>> = OnceLock::new();
    OPENED
        .get_or_init(|| {
            let library =
                std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| DEFAULT_LIBRARY.to_string());
            ort::init_from(&library)
                .map_err(|e| format!("{library}: {e}"))?
                .with_name("lstm-forecast")
                .build()
                .map_err(|e| format!("{library}: {e}"))
        })
        .as_ref()
        .map_err(|why| EngineError::OnnxRuntimeMissing(why.clone()))
}

fn new_session(environment: &Environment, model_onnx: &[u8]) -> Result<Session, EngineError> {
    fn load_error<R>(e: ort::Error<R>) -> EngineError {
        EngineError::OnnxLoad(e.to_string())
    }
    Session::builder(environment)
        .map_err(load_error)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(load_error)?
        .with_intra_threads(1)
        .map_err(load_error)?
        .with_inter_threads(1)
        .map_err(load_error)?
        .with_intra_op_spinning(false)
        .map_err(load_error)?
        .commit_from_memory(model_onnx)
        .map_err(load_error)
}

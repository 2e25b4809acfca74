//! The engine port: something that maps a normalised batch to normalised forecasts.
//!
//! The trait is deliberately tiny (one call, plain slices) so that tests and future engines (ONNX
//! Runtime, say) do not depend on tch types.

use std::io::Cursor;
use std::sync::Once;

/// Runs the network on one batch.
pub trait Engine: Send + Sync {
    /// `input` is row-major `[batch, window, features]`; returns row-major `[batch, horizon]`.
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
    #[error("model.pt returned shape {actual:?}, expected [{batch}, {horizon}] (output.horizon in model.json)")]
    OutputShape {
        actual: Vec<i64>,
        batch: usize,
        horizon: usize,
    },
}

/// TorchScript on CPU via tch.
pub struct TorchEngine {
    module: tch::CModule,
    horizon: usize,
}

impl TorchEngine {
    /// Loads TorchScript from memory (an S3 body or an embedded file need no temporary file).
    pub fn load(model_pt: &[u8], horizon: usize) -> Result<Self, EngineError> {
        let mut module =
            tch::CModule::load_data_on_device(&mut Cursor::new(model_pt), tch::Device::Cpu)
                .map_err(|e| EngineError::Load(first_line(&e.to_string())))?;
        module.set_eval();
        Ok(TorchEngine { module, horizon })
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
        let _no_grad = tch::no_grad_guard();
        let shape = [batch as i64, window as i64, features as i64];
        let forward_error = |e: tch::TchError| EngineError::Forward(first_line(&e.to_string()));
        let x = tch::Tensor::from_slice(input)
            .f_view(shape)
            .map_err(forward_error)?;
        let y = self.module.forward_ts(&[x]).map_err(forward_error)?;
        let size = y.size();
        if size != [batch as i64, self.horizon as i64] {
            return Err(EngineError::OutputShape {
                actual: size,
                batch,
                horizon: self.horizon,
            });
        }
        let y = y
            .f_to_kind(tch::Kind::Float)
            .map_err(forward_error)?
            .f_contiguous()
            .map_err(forward_error)?;
        let flat = y.f_view([-1]).map_err(forward_error)?;
        Vec::<f32>::try_from(&flat).map_err(forward_error)
    }
}

/// libtorch messages carry a C++ backtrace after the first line; logs and HTTP errors want the
/// first line only.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

/// Process-wide libtorch settings, applied once before any JIT code runs. Returns the intra-op
/// thread count in effect.
///
/// - Intra-op threads: `None` uses [`available_cpus`]. Inter-op parallelism is left alone: one
///   forward at a time runs on the engine thread, so an inter-op pool would only add threads.
/// - The JIT's profiling executor is turned off. It re-optimises the graph over the first calls,
///   which made the first forecast ~80 ms instead of ~12 ms here, and a steady-state forward is no
///   faster with it for this model (measured: same p50 at batch 1 and 64).
pub fn configure_libtorch(requested_threads: Option<usize>) -> usize {
    static ONCE: Once = Once::new();
    let threads = requested_threads.unwrap_or_else(available_cpus).max(1);
    ONCE.call_once(|| {
        tch::set_num_threads(threads as i32);
        tch::jit::set_profiling_mode(false);
    });
    tch::get_num_threads().max(1) as usize
}

/// CPUs this process may really use: std honours sched affinity and cgroup v1/v2 CPU quotas
/// (a container limited to 1.5 CPUs gets 1), which is what ECS, Kubernetes and Lambda set.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

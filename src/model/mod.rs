//! A loaded model: contract + preprocessing + engine, and the batched forecast path.

pub mod calibrate;
pub mod contract;
pub mod engine;
pub mod footprint;
pub mod onnx;
pub mod preprocess;
pub mod signature;

use contract::{ContractError, ModelMetadata};
use engine::{Engine, EngineError, TorchEngine};
use onnx::OnnxEngine;
use preprocess::Pipeline;

/// The libtorch major.minor this build links (tch 0.26). TorchScript from another release may load
/// but behave differently, so the contract's `torch_version` must match.
pub const LIBTORCH_VERSION: &str = "2.13";

/// The files of a model, already in memory.
#[derive(Clone)]
pub struct ModelArtifacts {
    pub metadata_json: Vec<u8>,
    pub model_pt: Vec<u8>,
    /// Present when `model.json` declares `onnx_sha256` (sources read it only then).
    pub model_onnx: Option<Vec<u8>>,
    /// `model.sig`, the publisher's signature over the files, when the version has one.
    pub signature: Option<Vec<u8>>,
}

impl ModelArtifacts {
    /// The files under their names, in the order a writer stores them: `model.json` last, so a
    /// reader that finds it finds the files it vouches for.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![("model.pt", self.model_pt.as_slice())];
        if let Some(model_onnx) = &self.model_onnx {
            files.push(("model.onnx", model_onnx.as_slice()));
        }
        files.push(("model.json", self.metadata_json.as_slice()));
        files
    }

    /// [`ModelArtifacts::files`] with the signature, when there is one, before `model.json`:
    /// what a writer stores (the registry, the cache, a probe's scratch copy).
    pub fn stored_files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = self.files();
        if let Some(signature) = &self.signature {
            files.insert(
                files.len() - 1,
                (signature::SIGNATURE_FILE, signature.as_slice()),
            );
        }
        files
    }
}

impl std::fmt::Debug for ModelArtifacts {
    /// Sizes only: dumping a model's bytes into a log helps nobody.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelArtifacts")
            .field("metadata_json_bytes", &self.metadata_json.len())
            .field("model_pt_bytes", &self.model_pt.len())
            .field("model_onnx_bytes", &self.model_onnx.as_ref().map(Vec::len))
            .finish()
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(
        "model.json torch_version {declared} does not match the linked libtorch {LIBTORCH_VERSION}"
    )]
    TorchVersion { declared: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    // Not a `#[source]`: the message already carries it, and `{:#}` would print it twice.
    #[error("warm-up forecast failed: {0}")]
    WarmUp(ForecastError),
    #[error(
        "model.onnx and model.pt disagree: forecasts differ by up to {max_difference:.3e} (normalised units, \
         at most {ENGINE_AGREEMENT:.0e} allowed); re-export model.onnx from model.pt"
    )]
    EnginesDisagree { max_difference: f32 },
    /// With a verification key set, the version's signature does not hold (or is missing).
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
}

/// How far ONNX Runtime's and libtorch's forecasts of the same window may differ, in normalised
/// units. The two implementations' float rounding gives at most 3e-7 on the bundled model's probe
/// windows. Tight on purpose: its output leans on a linear "highway" from the window, so even
/// 64 negated LSTM weights move a forecast by only 2.5e-5.
pub const ENGINE_AGREEMENT: f32 = 1e-5;

/// Why one forecast batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("series[{series}] has {actual} values, expected {expected} (window x features)")]
    Shape {
        series: usize,
        expected: usize,
        actual: usize,
    },
    #[error("series[{series}] has values too large to represent after normalisation")]
    InputOutOfRange { series: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the model produced a non-finite forecast for series[{series}]")]
    NonFiniteOutput { series: usize },
}

impl ForecastError {
    /// Errors the caller caused (bad input) as opposed to the model or engine failing.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ForecastError::Shape { .. } | ForecastError::InputOutOfRange { .. }
        )
    }
}

/// One series' forecast as the model made it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesOutput {
    /// The point forecast, original scale.
    pub values: Vec<f64>,
    /// For a quantile network: one row per `output.quantiles` level, ascending, never crossing.
    pub quantiles: Vec<Vec<f64>>,
    /// The first step at which the network's own quantiles were out of order (sorted since):
    /// `model validate` refuses such a network.
    pub crossed_at: Option<usize>,
}

pub struct Model {
    metadata: ModelMetadata,
    pipeline: Pipeline,
    /// libtorch: the reference, and every forward's engine when `onnx_engine` is absent.
    engine: Box<dyn Engine>,
    /// Answers every forward when present (ONNX Runtime; see [`onnx`] for why).
    onnx_engine: Option<Box<dyn Engine>>,
}

/// Which engine answers the forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardEngine {
    OnnxRuntime,
    Libtorch,
}

impl ForwardEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardEngine::OnnxRuntime => "onnxruntime",
            ForwardEngine::Libtorch => "libtorch",
        }
    }

    /// Whether a forward can use more than one CPU. libtorch's OpenMP team takes as many
    /// intra-op threads as it is given; ONNX Runtime sessions run on the calling thread alone
    /// (see [`onnx`]), so a low-latency engine thread with every CPU would only add its gate.
    pub fn spreads_over_intra_op_threads(self) -> bool {
        match self {
            ForwardEngine::OnnxRuntime => false,
            ForwardEngine::Libtorch => true,
        }
    }
}

impl Model {
    /// Checks the contract and checksum, loads TorchScript and runs a warm-up forecast, so a model
    /// that loads is one that answers.
    pub fn load(artifacts: &ModelArtifacts) -> Result<Self, ModelError> {
        let model = Self::load_unwarmed(artifacts)?;
        model.warm_up()?;
        Ok(model)
    }

    /// [`Model::load`] without the warm-up forecast (callers that time the two separately).
    pub fn load_unwarmed(artifacts: &ModelArtifacts) -> Result<Self, ModelError> {
        // Before any byte reaches libtorch, ONNX Runtime or even the contract's parser.
        if let Some(verifier) = signature::required() {
            verifier.verify(artifacts.signature.as_deref(), &artifacts.files())?;
        }
        let metadata = ModelMetadata::from_json(&artifacts.metadata_json)?;
        metadata.verify_checksum(&artifacts.model_pt)?;
        if !torch_version_matches(&metadata.torch_version) {
            return Err(ModelError::TorchVersion {
                declared: metadata.torch_version.clone(),
            });
        }
        let per_series = match &metadata.output.quantiles {
            None => vec![metadata.output.horizon],
            Some(q) => vec![metadata.output.horizon, q.len()],
        };
        let engine = TorchEngine::load_with_output(&artifacts.model_pt, &per_series)?;
        let onnx_engine = match (&metadata.onnx_sha256, &artifacts.model_onnx) {
            (None, None) => None,
            (Some(_), None) => return Err(ContractError::OnnxMissing.into()),
            (_, Some(model_onnx)) => {
                metadata.verify_onnx_checksum(model_onnx)?;
                match OnnxEngine::load(model_onnx, &per_series) {
                    Ok(onnx) => Some(onnx),
                    // The model is whole and libtorch answers everything, only slower:
                    // serving beats refusing to start. Said loudly, and on /v1/model.
                    Err(EngineError::OnnxRuntimeMissing(why)) => {
                        tracing::warn!(
                            model_version = %metadata.version,
                            "ONNX Runtime cannot be opened ({why}): forwards run on libtorch; \
                             set ORT_DYLIB_PATH to libonnxruntime.so for the faster engine"
                        );
                        None
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let model = Model::with_engine(metadata, Box::new(engine));
        Ok(match onnx_engine {
            Some(onnx) => model.with_onnx_engine(Box::new(onnx)),
            None => model,
        })
    }

    /// Assembles a model around any engine (tests use small fakes).
    pub fn with_engine(metadata: ModelMetadata, engine: Box<dyn Engine>) -> Self {
        Model {
            pipeline: Pipeline::new(&metadata),
            metadata,
            engine,
            onnx_engine: None,
        }
    }

    /// Sends every forward to `engine` instead; the first one stays the reference that
    /// [`Model::warm_up`] checks it against.
    pub fn with_onnx_engine(mut self, engine: Box<dyn Engine>) -> Self {
        self.onnx_engine = Some(engine);
        self
    }

    /// Which engine answers the forwards.
    pub fn forward_engine(&self) -> ForwardEngine {
        match self.onnx_engine {
            Some(_) => ForwardEngine::OnnxRuntime,
            None => ForwardEngine::Libtorch,
        }
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// Values per window: `window * features`, row-major.
    pub fn window_len(&self) -> usize {
        self.metadata.input.window * self.metadata.input.features.len()
    }

    /// One forecast of a window at the training mean: pays libtorch's lazy initialisation at load
    /// time instead of on the first request, and proves the output shape.
    ///
    /// It runs on a thread of its own. libgomp keeps an OpenMP team for the lifetime of each
    /// thread that ran a parallel region and counts it against the CPUs; a team left on the loading
    /// thread would push the engine threads' teams over that count, and their barriers would then
    /// sleep in the kernel instead of spinning (see `engine::oversubscription_warning`).
    pub fn warm_up(&self) -> Result<(), ModelError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.warm_up_on_this_thread())
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// [`Model::warm_up`] on the calling thread, for a process that runs every forward on that
    /// one thread (the `model validate` probe), where no other OpenMP team will ever exist.
    pub fn warm_up_on_this_thread(&self) -> Result<(), ModelError> {
        let row: Vec<f64> = self
            .metadata
            .input
            .features
            .iter()
            .map(|f| self.metadata.training_stats[f].mean)
            .collect();
        let window: Vec<f64> = row
            .iter()
            .copied()
            .cycle()
            .take(self.window_len())
            .collect();
        self.forecast(&[window])
            .map(|_| ())
            .map_err(ModelError::WarmUp)?;
        self.check_engines_agree()
    }

    /// Runs probe windows through both engines, one at a time, and refuses a `model.onnx` whose
    /// forecasts are not those of `model.pt`: the checksum proves the file is the one published,
    /// not that it was exported from this network. Then runs them through ONNX Runtime as one
    /// batch, which must answer as it did for each alone: an export whose batch dimension was
    /// frozen fails here, not on the first busy minute.
    ///
    /// libtorch only ever sees a batch of one here. Some broken TorchScript crashes the process on
    /// any other batch size, which only `model validate`'s child process may risk.
    fn check_engines_agree(&self) -> Result<(), ModelError> {
        let Some(onnx) = &self.onnx_engine else {
            return Ok(());
        };
        let (window, features) = (
            self.metadata.input.window,
            self.metadata.input.features.len(),
        );
        let probes: [fn(usize) -> f32; 3] = [
            |_| 0.0,
            |t| (t as f32 * 0.26).sin(),
            |t| (t % 24) as f32 / 12.0 - 1.0,
        ];
        let probes = probes.map(|probe| (0..window * features).map(probe).collect::<Vec<f32>>());
        let mut max_difference = 0f32;
        let mut alone = Vec::new();
        for input in &probes {
            let reference = self.engine.forward(input, 1, window, features)?;
            let answer = onnx.forward(input, 1, window, features)?;
            max_difference = max_difference.max(largest_difference(&answer, &reference)?);
            alone.extend(answer);
        }
        let together = onnx.forward(&probes.concat(), probes.len(), window, features)?;
        max_difference = max_difference.max(largest_difference(&together, &alone)?);
        match max_difference <= ENGINE_AGREEMENT {
            true => Ok(()),
            false => Err(ModelError::EnginesDisagree { max_difference }),
        }
    }

    /// Forecasts a batch of windows (original scale, row-major `[window][features]`) in one
    /// forward pass. Returns `horizon` target values per window, original scale (the median, for
    /// a quantile network).
    pub fn forecast<W: AsRef<[f64]>>(&self, windows: &[W]) -> Result<Vec<Vec<f64>>, ForecastError> {
        Ok(self
            .forecast_outputs(windows)?
            .into_iter()
            .map(|o| o.values)
            .collect())
    }

    /// [`Model::forecast`] with a quantile network's quantiles too.
    pub fn forecast_outputs<W: AsRef<[f64]>>(
        &self,
        windows: &[W],
    ) -> Result<Vec<SeriesOutput>, ForecastError> {
        let n = self.window_len();
        let mut input = vec![0f32; windows.len() * n];
        let mut scratch = Vec::with_capacity(n);
        let mut restores = Vec::with_capacity(windows.len());
        for (i, (window, out)) in windows.iter().zip(input.chunks_exact_mut(n)).enumerate() {
            let window = window.as_ref();
            if window.len() != n {
                return Err(ForecastError::Shape {
                    series: i,
                    expected: n,
                    actual: window.len(),
                });
            }
            restores.push(self.pipeline.normalize_into(window, &mut scratch, out));
            if out.iter().any(|x| !x.is_finite()) {
                return Err(ForecastError::InputOutOfRange { series: i });
            }
        }
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let horizon = self.metadata.output.horizon;
        let per_series = self.metadata.output.values_per_series();
        let engine = self.onnx_engine.as_ref().unwrap_or(&self.engine).as_ref();
        let output = engine.forward(
            &input,
            windows.len(),
            self.metadata.input.window,
            self.metadata.input.features.len(),
        )?;
        if output.len() != windows.len() * per_series {
            return Err(EngineError::OutputShape {
                actual: vec![output.len() as i64],
                expected: vec![(windows.len() * per_series) as i64],
            }
            .into());
        }
        let median = self.metadata.output.quantile_index(0.5);
        output
            .chunks_exact(per_series)
            .zip(&restores)
            .enumerate()
            .map(|(series, (y, restore))| {
                let Some(median) = median else {
                    let values = restore.apply(y);
                    return match values.iter().all(|v| v.is_finite()) {
                        true => Ok(SeriesOutput {
                            values,
                            quantiles: Vec::new(),
                            crossed_at: None,
                        }),
                        false => Err(ForecastError::NonFiniteOutput { series }),
                    };
                };
                // `[horizon, quantiles]`: one row per quantile, each restored like a forecast,
                // then sorted step by step so that no band ever crosses another.
                let count = per_series / horizon;
                let mut quantiles: Vec<Vec<f64>> = (0..count)
                    .map(|q| {
                        let row: Vec<f32> = (0..horizon).map(|k| y[k * count + q]).collect();
                        restore.apply(&row)
                    })
                    .collect();
                if quantiles.iter().flatten().any(|v| !v.is_finite()) {
                    return Err(ForecastError::NonFiniteOutput { series });
                }
                let mut crossed_at = None;
                for k in 0..horizon {
                    let mut step: Vec<f64> = quantiles.iter().map(|row| row[k]).collect();
                    if crossed_at.is_none() && step.windows(2).any(|w| w[0] > w[1]) {
                        crossed_at = Some(k);
                    }
                    step.sort_by(f64::total_cmp);
                    for (row, value) in quantiles.iter_mut().zip(step) {
                        row[k] = value;
                    }
                }
                Ok(SeriesOutput {
                    values: quantiles[median].clone(),
                    quantiles,
                    crossed_at,
                })
            })
            .collect()
    }
}

fn torch_version_matches(declared: &str) -> bool {
    let major_minor: Vec<&str> = declared.split(['.', '+']).take(2).collect();
    major_minor.join(".") == LIBTORCH_VERSION
}

/// The largest element-wise difference between an answer and its reference; NaN counts as the
/// largest difference, not as none.
fn largest_difference(answer: &[f32], reference: &[f32]) -> Result<f32, EngineError> {
    if answer.len() != reference.len() {
        return Err(EngineError::OutputShape {
            actual: vec![answer.len() as i64],
            expected: vec![reference.len() as i64],
        });
    }
    Ok(answer
        .iter()
        .zip(reference)
        .map(|(a, r)| (a - r).abs())
        .fold(0f32, |largest, difference| match difference.is_nan() {
            true => f32::INFINITY,
            false => largest.max(difference),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forecasts the last input value for every step: enough to check the plumbing around the engine.
    struct RepeatLast {
        horizon: usize,
    }

    impl Engine for RepeatLast {
        fn forward(
            &self,
            input: &[f32],
            batch: usize,
            window: usize,
            features: usize,
        ) -> Result<Vec<f32>, EngineError> {
            Ok((0..batch)
                .flat_map(|b| {
                    let last = input[(b * window + window - 1) * features];
                    std::iter::repeat_n(last, self.horizon)
                })
                .collect())
        }
    }

    fn metadata() -> ModelMetadata {
        serde_json::from_value(serde_json::json!({
            "format_version": 1, "name": "demo", "version": "1", "created_at": "2026-11-27T00:00:00Z",
            "torch_version": "2.13.0", "model_sha256": "0".repeat(64),
            "input": {"window": 3, "features": ["OT"], "target": "OT", "frequency": "1h"},
            "output": {"horizon": 2},
            "preprocessing": [{"kind": "z_score", "mean": [10.0], "std": [2.0]}],
            "training_stats": {"OT": {"mean": 10.0, "std": 2.0, "min": 0.0, "max": 20.0, "quantile_edges": [0.0, 20.0]}}
        }))
        .unwrap()
    }

    #[test]
    fn forecasts_come_back_on_the_original_scale_in_request_order() {
        let model = Model::with_engine(metadata(), Box::new(RepeatLast { horizon: 2 }));
        let out = model
            .forecast(&[vec![1.0, 2.0, 3.0], vec![7.0, 8.0, 9.5]])
            .unwrap();
        assert_eq!(out, vec![vec![3.0, 3.0], vec![9.5, 9.5]]);
    }

    /// Forecasts a constant, whatever the input: tells which engine answered.
    struct Constant(f32);

    impl Engine for Constant {
        fn forward(
            &self,
            _input: &[f32],
            batch: usize,
            _window: usize,
            _features: usize,
        ) -> Result<Vec<f32>, EngineError> {
            Ok(vec![self.0; batch * 2])
        }
    }

    #[test]
    fn every_forward_runs_on_the_onnx_engine_when_there_is_one() {
        let model = Model::with_engine(metadata(), Box::new(RepeatLast { horizon: 2 }))
            .with_onnx_engine(Box::new(Constant(0.5)));
        assert_eq!(model.forward_engine(), ForwardEngine::OnnxRuntime);
        // z-score with mean 10 and std 2: 0.5 is 11 on the original scale.
        assert_eq!(
            model.forecast(&[vec![1.0, 2.0, 3.0]]).unwrap(),
            vec![vec![11.0, 11.0]]
        );
        assert_eq!(
            model
                .forecast(&[vec![1.0, 2.0, 3.0], vec![7.0, 8.0, 9.5]])
                .unwrap(),
            vec![vec![11.0, 11.0], vec![11.0, 11.0]]
        );
        let without = Model::with_engine(metadata(), Box::new(RepeatLast { horizon: 2 }));
        assert_eq!(without.forward_engine(), ForwardEngine::Libtorch);
        assert_eq!(
            without
                .forecast(&[vec![1.0, 2.0, 3.0], vec![7.0, 8.0, 9.5]])
                .unwrap(),
            vec![vec![3.0, 3.0], vec![9.5, 9.5]]
        );
    }

    #[test]
    fn engines_that_disagree_are_refused_at_warm_up_and_engines_that_agree_are_not() {
        let disagreeing = Model::with_engine(metadata(), Box::new(Constant(0.0)))
            .with_onnx_engine(Box::new(Constant(0.01)));
        let error = disagreeing.warm_up_on_this_thread().unwrap_err();
        assert!(
            matches!(error, ModelError::EnginesDisagree { max_difference } if (max_difference - 0.01).abs() < 1e-6),
            "{error}"
        );
        let within_rounding = Model::with_engine(metadata(), Box::new(Constant(0.0)))
            .with_onnx_engine(Box::new(Constant(ENGINE_AGREEMENT / 10.0)));
        within_rounding.warm_up_on_this_thread().unwrap();
        let not_a_number = Model::with_engine(metadata(), Box::new(Constant(0.0)))
            .with_onnx_engine(Box::new(Constant(f32::NAN)));
        assert!(not_a_number.warm_up_on_this_thread().is_err());
    }

    /// An ONNX export whose batch dimension was frozen at one: right alone, wrong in a batch.
    struct BatchOfOneOnly;

    impl Engine for BatchOfOneOnly {
        fn forward(
            &self,
            _input: &[f32],
            _batch: usize,
            _window: usize,
            _features: usize,
        ) -> Result<Vec<f32>, EngineError> {
            Ok(vec![0.0; 2])
        }
    }

    #[test]
    fn an_onnx_engine_right_only_for_lone_windows_is_refused_at_warm_up() {
        let model = Model::with_engine(metadata(), Box::new(Constant(0.0)))
            .with_onnx_engine(Box::new(BatchOfOneOnly));
        let error = model.warm_up_on_this_thread().unwrap_err();
        assert!(
            matches!(error, ModelError::Engine(EngineError::OutputShape { .. })),
            "{error}"
        );
    }

    #[test]
    fn wrong_window_lengths_never_reach_the_engine() {
        let model = Model::with_engine(metadata(), Box::new(RepeatLast { horizon: 2 }));
        let err = model
            .forecast(&[vec![1.0, 2.0, 3.0], vec![1.0]])
            .unwrap_err();
        assert!(matches!(
            err,
            ForecastError::Shape {
                series: 1,
                expected: 3,
                actual: 1
            }
        ));
        assert!(err.is_client_error());
    }

    #[test]
    fn values_that_overflow_f32_after_normalisation_are_refused() {
        let model = Model::with_engine(metadata(), Box::new(RepeatLast { horizon: 2 }));
        let err = model.forecast(&[vec![1.0, 2.0, 1e300]]).unwrap_err();
        assert!(matches!(err, ForecastError::InputOutOfRange { series: 0 }));
    }

    #[test]
    fn an_engine_returning_the_wrong_horizon_is_an_error_not_a_panic() {
        let model = Model::with_engine(metadata(), Box::new(RepeatLast { horizon: 5 }));
        let err = model.forecast(&[vec![1.0, 2.0, 3.0]]).unwrap_err();
        assert!(matches!(
            err,
            ForecastError::Engine(EngineError::OutputShape { .. })
        ));
        assert!(model.warm_up().is_err());
    }

    #[test]
    fn torch_versions_compare_on_major_minor() {
        assert!(torch_version_matches("2.13.0"));
        assert!(torch_version_matches("2.13.1+cpu"));
        assert!(!torch_version_matches("2.12.0"));
        assert!(!torch_version_matches("2"));
    }
}

//! `model validate`: proves a model is safe to serve, without risking the caller.
//!
//! Some broken TorchScript does not raise, it kills the process: an LSTM traced with a fixed batch
//! segfaults inside oneDNN when called with another batch size. So the checks that touch libtorch
//! run in a child process (`lstm-forecast model probe DIR`), which reports each check as a JSON line
//! on stdout. If the child dies, the parent knows which check was running and reports the model
//! invalid; the caller carries on.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::contract::ModelMetadata;
use crate::model::{ForwardEngine, Model, ModelArtifacts};
use crate::source::DirectorySource;

/// Batch sizes the probe runs: 1 (a single request), 2 (the smallest batch), 64 (dynamic
/// batching's largest forward), 256 (the largest the service runs: a request, or a batch job's
/// chunk, of `Limits::max_series` series is one forward).
pub const PROBE_BATCH_SIZES: [usize; 4] = [1, 2, 64, 256];

/// Largest allowed difference between a series forecast alone and inside a batch, relative to
/// `|value| + training std`. Batched kernels may reorder float sums, nothing more.
const BATCH_CONSISTENCY_TOLERANCE: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub model: Option<String>,
    pub valid: bool,
    pub checks: Vec<Check>,
}

impl ValidationReport {
    /// The checks that failed, `name: detail`, joined for one line.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One line of the probe child's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum ProbeLine {
    Running { running: String },
    Done(Check),
}

/// Validates the model in `dir`. `exe` is this program's binary, re-run as the probe child.
pub fn validate_dir(exe: &Path, dir: &Path, timeout: Duration) -> ValidationReport {
    // Cheap, libtorch-free checks first, in this process.
    let (model, mut checks) = match file_checks(dir) {
        Ok(passed) => passed,
        Err(failed) => return failed,
    };
    // Everything that touches libtorch, in a child that may die.
    let probe = match run_child(exe, dir, timeout) {
        Ok(probe) => probe,
        Err(detail) => return failed(checks, Some(model), "probe", detail),
    };
    checks.extend(probe.done);
    if let Some(detail) = probe_failure(
        &probe.status,
        probe.running,
        &checks,
        timeout,
        &probe.stderr,
    ) {
        return failed(checks, Some(model), "probe", detail);
    }
    let valid = !checks.is_empty() && checks.iter().all(|c| c.ok);
    ValidationReport {
        model: Some(model),
        valid,
        checks,
    }
}

/// Why a fetched version failed its probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("could not write version {version} to {dir} for its probe: {cause}")]
    Scratch {
        version: String,
        dir: String,
        cause: std::io::Error,
    },
    #[error("version {version} failed its probe: {failed}")]
    Failed { version: String, failed: String },
}

/// Probes `artifacts` (a version fetched from the registry, not on disk yet) in a child process of
/// `exe`, from a scratch directory under `scratch_root`: what `model promote`, `model challenge`
/// and the alias follower run before a version may serve. Blocks until the child is done.
pub fn probe_artifacts(
    exe: &Path,
    artifacts: &ModelArtifacts,
    version: &str,
    scratch_root: &Path,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let dir = scratch_root.join(format!(
        "lstm-forecast-probe-{}-{}-{version}",
        std::process::id(),
        crate::entropy::id()
    ));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        artifacts
            .stored_files()
            .into_iter()
            .try_for_each(|(name, bytes)| std::fs::write(dir.join(name), bytes))
    });
    if let Err(cause) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(ProbeError::Scratch {
            version: version.to_string(),
            dir: dir.display().to_string(),
            cause,
        });
    }
    let report = validate_dir(exe, &dir, timeout);
    let _ = std::fs::remove_dir_all(&dir);
    if report.valid {
        return Ok(());
    }
    Err(ProbeError::Failed {
        version: version.to_string(),
        failed: report.failures(),
    })
}

/// A report that ends with the failed check `name`.
fn failed(
    mut checks: Vec<Check>,
    model: Option<String>,
    name: &str,
    detail: String,
) -> ValidationReport {
    checks.push(Check {
        name: name.into(),
        ok: false,
        detail,
    });
    ValidationReport {
        model,
        valid: false,
        checks,
    }
}

/// The files, the contract and the checksums: the model's `name version` and the passed checks,
/// or the report that ends at the first failure.
fn file_checks(dir: &Path) -> Result<(String, Vec<Check>), ValidationReport> {
    let mut checks = Vec::new();
    let artifacts = DirectorySource::new(dir)
        .read()
        .map_err(|e| failed(Vec::new(), None, "files", e.to_string()))?;
    let metadata = ModelMetadata::from_json(&artifacts.metadata_json)
        .map_err(|e| failed(Vec::new(), None, "contract", e.to_string()))?;
    let model = format!("{} {}", metadata.name, metadata.version);
    checks.push(Check {
        name: "contract".into(),
        ok: true,
        detail: format!(
            "window {} x {:?} -> horizon {} of {} at {}",
            metadata.input.window,
            metadata.input.features,
            metadata.output.horizon,
            metadata.input.target,
            metadata.input.frequency
        ),
    });
    let onnx_checksum = artifacts
        .model_onnx
        .as_ref()
        .map_or(Ok(()), |onnx| metadata.verify_onnx_checksum(onnx));
    if let Err(e) = metadata
        .verify_checksum(&artifacts.model_pt)
        .and(onnx_checksum)
    {
        return Err(failed(checks, Some(model), "checksum", e.to_string()));
    }
    checks.push(Check {
        name: "checksum".into(),
        ok: true,
        detail: match &metadata.onnx_sha256 {
            None => format!("sha256 {}", metadata.model_sha256),
            Some(onnx) => format!(
                "sha256 {} (model.pt), {onnx} (model.onnx)",
                metadata.model_sha256
            ),
        },
    });
    Ok((model, checks))
}

/// What the probe child reported before it ended.
struct ProbeRun {
    /// `None`: killed at the deadline (or its status could not be read).
    status: Option<std::process::ExitStatus>,
    /// The check it had started and not finished.
    running: Option<String>,
    done: Vec<Check>,
    stderr: String,
}

/// Runs `exe model probe DIR`, reading its check lines until it exits or `timeout` passes.
fn run_child(exe: &Path, dir: &Path, timeout: Duration) -> Result<ProbeRun, String> {
    let mut child = Command::new(exe)
        .args(["model", "probe"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut running = None;
        let mut done = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str::<ProbeLine>(&line) {
                Ok(ProbeLine::Running { running: name }) => running = Some(name),
                Ok(ProbeLine::Done(check)) => {
                    running = None;
                    done.push(check);
                }
                Err(_) => {}
            }
        }
        (running, done)
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let (running, done) = reader.join().unwrap_or_default();
    Ok(ProbeRun {
        status,
        running,
        done,
        stderr: stderr_reader.join().unwrap_or_default(),
    })
}

/// Why the probe itself failed (a timeout, a crash), as opposed to reporting failed checks.
fn probe_failure(
    status: &Option<std::process::ExitStatus>,
    running: Option<String>,
    checks: &[Check],
    timeout: Duration,
    stderr: &str,
) -> Option<String> {
    // Exit status 1 with no check left running is the probe reporting failed checks, not a crash.
    let reported_failures = running.is_none()
        && checks.iter().any(|c| !c.ok)
        && status.and_then(|s| s.code()) == Some(1);
    let during = running
        .map(|name| format!(" during `{name}`"))
        .unwrap_or_default();
    match status {
        Some(_) if reported_failures => None,
        None => Some(format!(
            "probe did not finish within {}s{during}",
            timeout.as_secs()
        )),
        Some(status) if !status.success() => {
            let how = describe_exit(*status);
            let last_stderr = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!("; last stderr line: {}", l.trim()))
                .unwrap_or_default();
            Some(format!("the probe process {how}{during}: libtorch cannot run this model safely{last_stderr}"))
        }
        Some(_) => None,
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                4 => "SIGILL",
                6 => "SIGABRT",
                7 => "SIGBUS",
                8 => "SIGFPE",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                _ => "signal",
            };
            return format!("crashed with {name} ({signal})");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited abnormally".into(),
    }
}

/// The child side: loads the model and runs every batch size, one JSON line per check.
/// Returns false if any check failed. Never called in a process that must survive.
pub fn run_probe(artifacts: &ModelArtifacts, out: &mut dyn std::io::Write) -> bool {
    let mut emit = |line: &ProbeLine| {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(line).expect("serialisable")
        );
        let _ = out.flush();
    };
    emit(&ProbeLine::Running {
        running: "load".into(),
    });
    // All on this thread, as the forwards after it: a crash caused by what the warm-up did to
    // memory then shows up in the same place on every run (a warm-up on another thread moved
    // the traced fixture's crash from `batch 2` to `batch 64` in about one run in five).
    let model = match Model::load_unwarmed(artifacts)
        .and_then(|model| model.warm_up_on_this_thread().map(|()| model))
    {
        Ok(m) => m,
        Err(e) => {
            emit(&ProbeLine::Done(Check {
                name: "load".into(),
                ok: false,
                detail: e.to_string(),
            }));
            return false;
        }
    };
    emit(&ProbeLine::Done(Check {
        name: "load".into(),
        ok: true,
        detail: match model.forward_engine() {
            ForwardEngine::Libtorch => {
                "TorchScript loaded; warm-up forecast finite and of the declared shape".into()
            }
            ForwardEngine::OnnxRuntime => "TorchScript and model.onnx loaded and agree; \
                warm-up forecast finite and of the declared shape; forwards run on ONNX Runtime"
                .into(),
        },
    }));
    let largest = *PROBE_BATCH_SIZES.iter().max().expect("non-empty");
    let windows = probe_windows(model.metadata(), largest);
    // Each series forecast alone is the reference a batch must reproduce.
    let mut singles = Vec::with_capacity(largest);
    let mut all_ok = true;
    for batch in PROBE_BATCH_SIZES {
        let name = format!("batch {batch}");
        emit(&ProbeLine::Running {
            running: name.clone(),
        });
        while singles.len() < batch {
            match model.forecast(&windows[singles.len()..=singles.len()]) {
                Ok(mut out) => singles.push(out.remove(0)),
                Err(e) => {
                    emit(&ProbeLine::Done(Check {
                        name,
                        ok: false,
                        detail: format!("single-series forecast failed: {e}"),
                    }));
                    return false;
                }
            }
        }
        let check = batch_check(&model, &windows[..batch], &singles, name);
        all_ok &= check.ok;
        emit(&ProbeLine::Done(check));
    }
    if let Some(quantiles) = &model.metadata().output.quantiles {
        let name = "quantiles".to_string();
        emit(&ProbeLine::Running {
            running: name.clone(),
        });
        let check = quantiles_check(&model, &windows, quantiles, name);
        all_ok &= check.ok;
        emit(&ProbeLine::Done(check));
    }
    all_ok
}

/// A batch's forecasts must be finite, shaped, and each the series' forecast alone (`singles`).
fn batch_check(model: &Model, windows: &[Vec<f64>], singles: &[Vec<f64>], name: String) -> Check {
    let batch = windows.len();
    let metadata = model.metadata();
    let out = match model.forecast(windows) {
        Err(e) => {
            return Check {
                name,
                ok: false,
                detail: e.to_string(),
            }
        }
        Ok(out) => out,
    };
    let std = metadata.training_stats[&metadata.input.target].std;
    let worst = out
        .iter()
        .zip(singles)
        .flat_map(|(b, s)| {
            b.iter()
                .zip(s)
                .map(|(b, s)| (b - s).abs() / (s.abs() + std))
        })
        .fold(0.0, f64::max);
    let shaped = out.len() == batch && out.iter().all(|s| s.len() == metadata.output.horizon);
    let (ok, detail) = if !shaped {
        (
            false,
            "forecast count or horizon does not match the batch".into(),
        )
    } else if worst > BATCH_CONSISTENCY_TOLERANCE {
        (false, format!(
            "a series' forecast differs inside the batch from alone (relative difference {worst:.2e} > {BATCH_CONSISTENCY_TOLERANCE:.0e})"
        ))
    } else {
        (true, format!("finite, [{batch}, {}], matches single-series forecasts (max rel. diff {worst:.1e})", metadata.output.horizon))
    };
    Check { name, ok, detail }
}

/// A network's quantile outputs must stay ordered at every step of every probe window.
fn quantiles_check(model: &Model, windows: &[Vec<f64>], quantiles: &[f64], name: String) -> Check {
    match model.forecast_outputs(windows) {
        Err(e) => Check { name, ok: false, detail: e.to_string() },
        Ok(outputs) => match outputs.iter().enumerate().find_map(|(i, o)| Some((i, o.crossed_at?))) {
            Some((series, step)) => Check {
                name,
                ok: false,
                detail: format!(
                    "the network's quantiles {quantiles:?} cross (a lower level above a higher one) at step {step} of probe series {series}: train with a loss or head that keeps them ordered"
                ),
            },
            None => Check {
                name,
                ok: true,
                detail: format!("quantiles {quantiles:?} ordered at every step of {} probe series", outputs.len()),
            },
        },
    }
}

/// Deterministic, distinct, plausible windows: daily-ish sine waves around the training mean.
fn probe_windows(metadata: &ModelMetadata, count: usize) -> Vec<Vec<f64>> {
    let features = &metadata.input.features;
    (0..count)
        .map(|series| {
            (0..metadata.input.window)
                .flat_map(|t| {
                    features.iter().map(move |f| {
                        let stats = &metadata.training_stats[f];
                        let phase = series as f64 * 0.37;
                        stats.mean
                            + stats.std
                                * (0.8 * ((t as f64) * std::f64::consts::TAU / 24.0 + phase).sin()
                                    + 0.01 * series as f64)
                    })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_runs_the_largest_batch_the_service_forecasts_at_once() {
        let largest_request = crate::service::Limits::default().max_series;
        assert_eq!(PROBE_BATCH_SIZES.iter().max(), Some(&largest_request));
    }
}

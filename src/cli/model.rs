//! `lstm-forecast model ...`: check, inspect and publish models; move the registry's alias.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use lstm_forecast::model::engine::{configure_libtorch, Workload};
use lstm_forecast::model::ModelArtifacts;
use lstm_forecast::registry::{Alias, Registry, RegistryRef, RollbackOutcome, DEFAULT_PROBATION};
use lstm_forecast::source::DirectorySource;
use lstm_forecast::validate::{run_probe, validate_dir};

use super::args::{AwsArgs, ModelCommand};
use super::{load_model, runtime};

pub fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Validate {
            dir,
            json,
            timeout_secs,
        } => return validate(dir, json, timeout_secs),
        ModelCommand::Calibrate {
            dir,
            data,
            targets,
            levels,
            check,
        } => calibrate(&dir, &data, targets, &levels, check)?,
        ModelCommand::Show { model } => {
            let model = load_model(&model, Workload::OneAtATime)?;
            println!("{}", serde_json::to_string_pretty(model.metadata())?);
        }
        ModelCommand::Publish {
            dir,
            registry,
            no_promote,
            aws,
        } => publish(dir, &open_registry(&registry, &aws)?, !no_promote)?,
        ModelCommand::List { registry, aws } => list(&open_registry(&registry, &aws)?)?,
        ModelCommand::Promote {
            registry,
            target_version: version,
            probation_hours,
            aws,
        } => {
            let registry = open_registry(&registry, &aws)?;
            let runtime = runtime()?;
            probe_published(&runtime, &registry, &version)?;
            let probation = Duration::from_secs(probation_hours * 3600);
            match runtime.block_on(registry.promote(&version, probation))? {
                Some(p) if p == version => println!("{version} is already live"),
                Some(p) => {
                    println!("{version} is live (was {p}); {p} stays shadowed as previous for {probation_hours} h")
                }
                None => println!("{version} is live"),
            }
        }
        ModelCommand::Challenge {
            registry,
            target_version: version,
            mode,
            fraction,
            aws,
        } => {
            let registry = open_registry(&registry, &aws)?;
            let runtime = runtime()?;
            probe_published(&runtime, &registry, &version)?;
            let alias = runtime.block_on(registry.challenge(&version, mode, fraction))?;
            println!(
                "{version} challenges {} ({mode}, {:.0}% of series)",
                alias.version,
                fraction * 100.0
            );
        }
        ModelCommand::Withdraw { registry, aws } => {
            let registry = open_registry(&registry, &aws)?;
            let withdrawn = runtime()?.block_on(registry.withdraw())?;
            println!("{withdrawn} withdrawn");
        }
        ModelCommand::Status {
            registry,
            json,
            aws,
        } => status(&open_registry(&registry, &aws)?, json)?,
        ModelCommand::Rollback { registry, aws } => {
            let registry = open_registry(&registry, &aws)?;
            let trigger = format!("cli@{}", chrono::Utc::now().to_rfc3339());
            match runtime()?.block_on(registry.rollback(&trigger, None))? {
                RollbackOutcome::RolledBack { from, to }
                | RollbackOutcome::AlreadyApplied { from, to } => {
                    println!("rolled back: {to} is live (was {from})")
                }
            }
        }
        ModelCommand::Probe { dir } => {
            configure_libtorch(None, Workload::OneAtATime);
            let artifacts = DirectorySource::new(&dir).read()?;
            let ok = run_probe(&artifacts, &mut std::io::stdout().lock());
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn calibrate(
    dir: &std::path::Path,
    data: &std::path::Path,
    targets: std::ops::Range<usize>,
    levels: &[f64],
    check: Option<std::ops::Range<usize>>,
) -> anyhow::Result<()> {
    use lstm_forecast::model::calibrate::{backtest, coverage, split_conformal, Rows};
    lstm_forecast::forecast::check_interval_levels(levels)
        .map_err(|e| anyhow::anyhow!(e.message.replace("`intervals", "`--levels")))?;
    configure_libtorch(None, Workload::OneAtATime);
    let artifacts = DirectorySource::new(dir).read()?;
    let model = lstm_forecast::model::Model::load(&artifacts)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let features = model.metadata().input.features.clone();
    let values = read_columns(data, &features)?;
    let rows = Rows {
        values: &values,
        features: features.len(),
    };
    let scored = backtest(&model, &rows, targets.clone())?;
    if let Some(level) = levels
        .iter()
        .find(|&&l| scored.len() < lstm_forecast::monitor::calibration::errors_needed(l))
    {
        bail!(
            "{} forecasts cannot calibrate level {level}: it needs at least {} (widen --targets)",
            scored.len(),
            lstm_forecast::monitor::calibration::errors_needed(*level)
        );
    }
    let name = data.file_name().map_or_else(
        || data.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let label = format!(
        "{name} rows [{}, {}) as targets, every origin: {} forecasts",
        targets.start,
        targets.end,
        scored.len()
    );
    let calibration = split_conformal(&scored, levels, label);
    let path = dir.join("model.json");
    let original = std::fs::read_to_string(&path)?;
    let rewritten = with_calibration(&original, &calibration)?;
    // What is written must load as the same model, with the new calibration.
    let reread = lstm_forecast::model::contract::ModelMetadata::from_json(rewritten.as_bytes())?;
    let without_calibration = |text: &str| -> anyhow::Result<serde_json::Value> {
        let mut document: serde_json::Value = serde_json::from_str(text)?;
        if let Some(fields) = document.as_object_mut() {
            fields.remove("calibration");
        }
        Ok(document)
    };
    anyhow::ensure!(
        reread.calibration.as_ref().map(|c| (c.forecasts, c.levels.len()))
            == Some((calibration.forecasts, calibration.levels.len()))
            && without_calibration(&rewritten)? == without_calibration(&original)?,
        "the rewritten model.json would differ from the original beyond its calibration; left as it was"
    );
    std::fs::write(&path, rewritten).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{}: calibrated on {} forecasts",
        path.display(),
        scored.len()
    );
    println!("| level | mean width | coverage on the calibration rows |");
    println!("|---:|---:|---:|");
    for (level, covered, width) in coverage(&calibration, &scored) {
        println!("| {level} | {width:.3} | {covered:.3} |");
    }
    if let Some(check) = check {
        let held_out = backtest(&model, &rows, check.clone())?;
        println!(
            "rows [{}, {}), {} forecasts:",
            check.start,
            check.end,
            held_out.len()
        );
        println!("| level | coverage |");
        println!("|---:|---:|");
        for (level, covered, _) in coverage(&calibration, &held_out) {
            println!("| {level} | {covered:.3} |");
        }
    }
    Ok(())
}

/// `model_json` with `calibration` as its last field, the rest of the text untouched: parsing
/// and printing the whole document would rewrite the other numbers' last digits.
fn with_calibration(
    model_json: &str,
    calibration: &lstm_forecast::model::contract::Calibration,
) -> anyhow::Result<String> {
    const KEY: &str = ",\n  \"calibration\": ";
    let document: serde_json::Value = serde_json::from_str(model_json)?;
    let body = match model_json.find(KEY) {
        Some(at) => &model_json[..at],
        None if document.get("calibration").is_none() => model_json
            .trim_end()
            .strip_suffix('}')
            .context("model.json does not end with `}`")?
            .trim_end(),
        None => bail!(
            "model.json has a `calibration` that is not its last field; remove it and run again"
        ),
    };
    let pretty = serde_json::to_string_pretty(calibration)?.replace('\n', "\n  ");
    Ok(format!("{body}{KEY}{pretty}\n}}\n"))
}

/// The named columns of a CSV file, row-major, in the order given.
fn read_columns(path: &std::path::Path, columns: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let indices: Vec<usize> = columns
        .iter()
        .map(|c| {
            headers.iter().position(|h| h == c).with_context(|| {
                format!(
                    "{} has no column `{c}` (header: {})",
                    path.display(),
                    headers.iter().collect::<Vec<_>>().join(",")
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut values = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{} line {}", path.display(), line + 2))?;
        for &i in &indices {
            let cell = record.get(i).unwrap_or("");
            values.push(cell.parse::<f64>().with_context(|| {
                format!(
                    "{} line {}: `{cell}` is not a number",
                    path.display(),
                    line + 2
                )
            })?);
        }
    }
    Ok(values)
}

fn validate(dir: PathBuf, json: bool, timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating this executable for the probe process")?;
    let report = validate_dir(&exe, &dir, Duration::from_secs(timeout_secs));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {}",
            dir.display(),
            report.model.as_deref().unwrap_or("(unreadable)")
        );
        for check in &report.checks {
            println!(
                "  {} {:<9} {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        println!("{}", if report.valid { "valid" } else { "INVALID" });
    }
    Ok(if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn open_registry(uri: &str, aws: &AwsArgs) -> anyhow::Result<Registry> {
    let model = RegistryRef::parse(uri)?;
    if model.version.is_some() {
        bail!("`{uri}` names a version; registry commands take s3://BUCKET/models/NAME");
    }
    let config = runtime()?.block_on(lstm_forecast::aws::sdk_config(
        aws.aws_endpoint_url.as_deref(),
    ));
    Ok(Registry::new(lstm_forecast::aws::s3_client(&config), model))
}

fn list(registry: &Registry) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let alias = registry.read_alias().await?.map(|(alias, _)| alias);
        for version in registry.list_versions().await? {
            let roles = alias
                .as_ref()
                .map(|a| roles_of(a, &version))
                .unwrap_or_default();
            if roles.is_empty() {
                println!("{version}");
            } else {
                println!("{version}  ({})", roles.join(", "));
            }
        }
        if let Some(alias) = alias {
            println!("live history: {}", alias.history.join(" -> "));
        }
        anyhow::Ok(())
    })
}

/// The roles `version` holds in the alias.
fn roles_of(alias: &Alias, version: &str) -> Vec<String> {
    let mut roles = Vec::new();
    if alias.version == version {
        roles.push("live".to_string());
    }
    if let Some(c) = alias.challenger.as_ref().filter(|c| c.version == version) {
        roles.push(format!(
            "challenger, {} on {:.0}% of series since {}",
            c.mode,
            c.fraction * 100.0,
            c.since
        ));
    }
    if let Some(p) = alias.previous.as_ref().filter(|p| p.version == version) {
        roles.push(format!("previous, on probation until {}", p.until));
    }
    roles
}

/// `model status`: the roles and the decisions, as text or as the alias document.
fn status(registry: &Registry, json: bool) -> anyhow::Result<()> {
    let Some((alias, _)) = runtime()?.block_on(registry.read_alias())? else {
        bail!("no model is live in {} yet", registry.model.root_uri());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&alias)?);
        return Ok(());
    }
    println!("live: {} (since {})", alias.version, alias.updated_at);
    for version in [
        alias.challenger.as_ref().map(|c| c.version.as_str()),
        alias.previous.as_ref().map(|p| p.version.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        println!("{version}: {}", roles_of(&alias, version).join(", "));
    }
    for d in &alias.decisions {
        let evidence = d.evidence.as_ref().map_or(String::new(), |e| {
            format!(
                " [{} origins, loss ratio {:.3}, p {}]",
                e.origins,
                e.ratio,
                e.p_value.map_or("n/a".into(), |p| format!("{p:.4}"))
            )
        });
        let acted = if d.acted {
            ""
        } else {
            " (recorded, not acted on)"
        };
        println!(
            "{} {} {}{}: {}{evidence}{acted}",
            d.at,
            d.action.as_str(),
            d.version,
            d.against
                .as_ref()
                .map_or(String::new(), |a| format!(" vs {a}")),
            d.reason
        );
    }
    Ok(())
}

/// Validates `dir` with the child-process probe; `Err` names every failed check.
fn probe(dir: &std::path::Path) -> anyhow::Result<Result<(), String>> {
    eprintln!("validating {} ...", dir.display());
    let exe = std::env::current_exe().context("locating this executable for the probe process")?;
    let report = validate_dir(&exe, dir, Duration::from_secs(120));
    if report.valid {
        return Ok(Ok(()));
    }
    Ok(Err(report.failures()))
}

/// Fetches a published version and probes it before a command makes it serve: it may have
/// reached the registry another way than `publish` (a direct upload).
fn probe_published(
    runtime: &tokio::runtime::Runtime,
    registry: &Registry,
    version: &str,
) -> anyhow::Result<()> {
    let artifacts = runtime.block_on(registry.fetch_version(version))?;
    probe_fetched(&artifacts, version)
}

/// Probes a version fetched from the registry, from a scratch directory; refuses it by name.
fn probe_fetched(artifacts: &ModelArtifacts, version: &str) -> anyhow::Result<()> {
    eprintln!("probing version {version} ...");
    let exe = std::env::current_exe().context("locating this executable for the probe process")?;
    lstm_forecast::validate::probe_artifacts(
        &exe,
        artifacts,
        version,
        &std::env::temp_dir(),
        Duration::from_secs(120),
    )
    .map_err(|e| anyhow::anyhow!("{e}; the alias is unchanged"))
}

fn publish(dir: PathBuf, registry: &Registry, promote: bool) -> anyhow::Result<()> {
    if let Err(failed) = probe(&dir)? {
        bail!(
            "{} is not valid, nothing was uploaded: {failed}",
            dir.display()
        );
    }
    let artifacts = DirectorySource::new(&dir).read()?;
    let total: u64 = artifacts
        .stored_files()
        .iter()
        .map(|(_, bytes)| bytes.len() as u64)
        .sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("valid template"),
    );
    let runtime = runtime()?;
    let version = runtime.block_on(registry.publish(&artifacts, &|done| bar.set_position(done)))?;
    bar.finish_with_message(format!("{}/{version}", registry.model.root_uri()));
    if promote {
        match runtime.block_on(registry.promote(&version, DEFAULT_PROBATION))? {
            Some(p) => println!("published {version}; live (was {p})"),
            None => println!("published {version}; live"),
        }
    } else {
        println!("published {version} (not live; `lstm-forecast model promote` makes it live)");
    }
    Ok(())
}

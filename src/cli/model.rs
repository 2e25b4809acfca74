//! `lstm-forecast model ...`: check, inspect and publish models; move the registry's alias.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use lstm_forecast::model::engine::{configure_libtorch, Workload};
use lstm_forecast::registry::{Registry, RegistryRef, RollbackOutcome};
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
            aws,
        } => {
            let registry = open_registry(&registry, &aws)?;
            match runtime()?.block_on(registry.promote(&version))? {
                Some(p) if p == version => println!("{version} is already live"),
                Some(p) => println!("{version} is live (was {p})"),
                None => println!("{version} is live"),
            }
        }
        ModelCommand::Rollback { registry, aws } => {
            let registry = open_registry(&registry, &aws)?;
            let trigger = format!("cli@{}", chrono::Utc::now().to_rfc3339());
            match runtime()?.block_on(registry.rollback(&trigger))? {
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
        let live = registry.read_alias().await?.map(|(alias, _)| alias);
        for version in registry.list_versions().await? {
            let marker = if live.as_ref().is_some_and(|a| a.version == version) {
                "  (live)"
            } else {
                ""
            };
            println!("{version}{marker}");
        }
        if let Some(alias) = live {
            println!("live history: {}", alias.history.join(" -> "));
        }
        anyhow::Ok(())
    })
}

fn publish(dir: PathBuf, registry: &Registry, promote: bool) -> anyhow::Result<()> {
    eprintln!("validating {} ...", dir.display());
    let exe = std::env::current_exe().context("locating this executable for the probe process")?;
    let report = validate_dir(&exe, &dir, Duration::from_secs(120));
    if !report.valid {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        bail!(
            "{} is not valid, nothing was uploaded: {}",
            dir.display(),
            failed.join("; ")
        );
    }
    let artifacts = DirectorySource::new(&dir).read()?;
    let total = (artifacts.model_pt.len() + artifacts.metadata_json.len()) as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("valid template"),
    );
    let runtime = runtime()?;
    let version = runtime.block_on(registry.publish(&artifacts, &|done| bar.set_position(done)))?;
    bar.finish_with_message(format!("{}/{version}", registry.model.root_uri()));
    if promote {
        match runtime.block_on(registry.promote(&version))? {
            Some(p) => println!("published {version}; live (was {p})"),
            None => println!("published {version}; live"),
        }
    } else {
        println!("published {version} (not live; `lstm-forecast model promote` makes it live)");
    }
    Ok(())
}

//! The model registry on S3. (The model source that reads from it, with its disk cache, is
//! `source::s3`.)
//!
//! Layout under `s3://BUCKET/models/NAME/`:
//!
//! ```text
//! VERSION/model.pt      TorchScript, uploaded first
//! VERSION/model.onnx    the same network for ONNX Runtime, when model.json declares onnx_sha256
//! VERSION/model.json    the contract, uploaded last: a version with model.json is complete
//! alias/live.json       {"version": "...", "history": [...], ...}: what serves, what served before,
//!                       the challenger and the previous version on probation ([`roles`])
//! ```
//!
//! The alias keeps its history (oldest first, current last) so a rollback knows where to go
//! without listing or sorting versions. Alias updates are conditional writes (`If-Match` on the
//! ETag read, `If-None-Match: *` when creating), so two concurrent promotions cannot silently
//! overwrite each other: the loser gets a conflict ([`crate::objects::ObjectErrorKind::Conflict`])
//! and can retry.

pub mod roles;

use serde::{Deserialize, Serialize};

use self::roles::{ChallengeMode, Challenger, Decision, DecisionAction, Previous, RoleError};
use crate::model::contract::{ContractError, ModelMetadata};
use crate::model::ModelArtifacts;
use crate::objects::{ObjectError, Precondition, S3Objects};

/// Where the registry lives and which model in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub bucket: String,
    pub name: String,
    /// A pinned version, or `None` for the `live` alias.
    pub version: Option<String>,
}

impl RegistryRef {
    /// Parses `s3://BUCKET/models/NAME` (the live alias) or `s3://BUCKET/models/NAME/VERSION`.
    pub fn parse(uri: &str) -> Result<Self, RegistryError> {
        let invalid = |why: &str| {
            RegistryError::Uri(format!(
                "`{uri}`: {why} (expected s3://BUCKET/models/NAME[/VERSION])"
            ))
        };
        let (bucket, key) =
            crate::aws::parse_s3_url(uri).ok_or_else(|| invalid("not an s3:// URL"))?;
        let parts: Vec<&str> = key.trim_end_matches('/').split('/').collect();
        match parts.as_slice() {
            ["models", name] if !name.is_empty() => Ok(RegistryRef {
                bucket,
                name: name.to_string(),
                version: None,
            }),
            ["models", name, version] if !name.is_empty() && !version.is_empty() => {
                Ok(RegistryRef {
                    bucket,
                    name: name.to_string(),
                    version: Some(version.to_string()),
                })
            }
            _ => Err(invalid(
                "the key must be models/NAME or models/NAME/VERSION",
            )),
        }
    }

    pub fn prefix(&self) -> String {
        format!("models/{}", self.name)
    }

    pub fn alias_key(&self) -> String {
        format!("{}/alias/live.json", self.prefix())
    }

    pub fn object_key(&self, version: &str, file: &str) -> String {
        format!("{}/{version}/{file}", self.prefix())
    }

    /// The registry URI without a version.
    pub fn root_uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix())
    }
}

impl std::fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}/{v}", self.root_uri()),
            None => write!(f, "{} (alias live)", self.root_uri()),
        }
    }
}

/// The `live` alias document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alias {
    /// The version in service.
    pub version: String,
    /// Versions that were live, oldest first; the last one is `version`.
    pub history: Vec<String>,
    pub updated_at: String,
    /// The last rollback, so a repeated alarm event is recognised and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<Rollback>,
    /// A version under test beside live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger: Option<Challenger>,
    /// The version the last promotion replaced, shadowed on probation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// What was decided about the roles, newest last, with the evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// What asked for it, e.g. `alarm:NAME@STATE-TIMESTAMP` or `cli`.
    pub trigger: String,
    pub from: String,
    pub to: String,
    pub at: String,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackOutcome {
    RolledBack {
        from: String,
        to: String,
    },
    /// The same trigger already rolled this alias back; nothing was changed.
    AlreadyApplied {
        from: String,
        to: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry URI {0}")]
    Uri(String),
    /// S3 refused or failed: missing object, access denied, unreachable, a lost conditional write.
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("no model is live: s3://{bucket}/{key} does not exist (publish one with `lstm-forecast model publish`)")]
    NoAlias { bucket: String, key: String },
    #[error("s3://{bucket}/{key} is not a valid alias document: {cause}")]
    InvalidAlias {
        bucket: String,
        key: String,
        cause: String,
    },
    #[error("version {version} is not in the registry (s3://{bucket}/{key} does not exist)")]
    UnknownVersion {
        version: String,
        bucket: String,
        key: String,
    },
    #[error("version {version} is already published at s3://{bucket}/{key}; versions are immutable, bump `version` in model.json")]
    AlreadyPublished {
        version: String,
        bucket: String,
        key: String,
    },
    #[error("cannot roll back {name}: {current} is the only version that was ever live; the alias is unchanged")]
    NoPreviousVersion { name: String, current: String },
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("model at s3://{bucket}/{key}: {cause}")]
    Contract {
        bucket: String,
        key: String,
        cause: ContractError,
    },
}

/// A model's versions and alias on S3.
#[derive(Clone)]
pub struct Registry {
    objects: S3Objects,
    pub model: RegistryRef,
}

impl Registry {
    pub fn new(
        client: impl Into<crate::aws::Shared<aws_sdk_s3::Client>>,
        model: RegistryRef,
    ) -> Self {
        Registry {
            objects: S3Objects::new(client, model.bucket.clone()),
            model,
        }
    }

    /// Reads the alias and its ETag; `None` when no model was ever promoted.
    pub async fn read_alias(&self) -> Result<Option<(Alias, Option<String>)>, RegistryError> {
        let key = self.model.alias_key();
        let Some(object) = self.objects.get_if_exists(&key).await? else {
            return Ok(None);
        };
        let alias =
            serde_json::from_slice(&object.bytes).map_err(|e| RegistryError::InvalidAlias {
                bucket: self.model.bucket.clone(),
                key: key.clone(),
                cause: e.to_string(),
            })?;
        Ok(Some((alias, object.etag)))
    }

    /// Writes the alias only if it still has `expected_etag` (or does not exist yet, for `None`).
    pub async fn write_alias(
        &self,
        alias: &Alias,
        expected_etag: Option<&str>,
    ) -> Result<(), RegistryError> {
        let key = self.model.alias_key();
        let body = serde_json::to_vec_pretty(alias).expect("alias serialises");
        let precondition = match expected_etag {
            Some(etag) => Precondition::Matches(etag),
            None => Precondition::Absent,
        };
        self.objects
            .put(&key, body, "application/json", precondition)
            .await?;
        Ok(())
    }

    /// The version the alias points at.
    pub async fn live_version(&self) -> Result<String, RegistryError> {
        match self.read_alias().await? {
            Some((alias, _)) => Ok(alias.version),
            None => Err(RegistryError::NoAlias {
                bucket: self.model.bucket.clone(),
                key: self.model.alias_key(),
            }),
        }
    }

    /// The pinned version, or the live one.
    pub async fn resolve_version(&self) -> Result<String, RegistryError> {
        match &self.model.version {
            Some(v) => Ok(v.clone()),
            None => self.live_version().await,
        }
    }

    /// Downloads one version's files (model.json, then model.pt, concurrently) and checks that
    /// they agree with each other and with the version they are filed under.
    pub async fn fetch_version(&self, version: &str) -> Result<ModelArtifacts, RegistryError> {
        let json_key = self.model.object_key(version, "model.json");
        let pt_key = self.model.object_key(version, "model.pt");
        let (json, pt) = tokio::join!(self.objects.get(&json_key), self.objects.get(&pt_key));
        let not_found_as_unknown = |e: ObjectError| {
            if e.is_missing() {
                RegistryError::UnknownVersion {
                    version: version.to_string(),
                    bucket: e.bucket,
                    key: e.key,
                }
            } else {
                RegistryError::Object(e)
            }
        };
        let metadata_json = json.map_err(not_found_as_unknown)?.bytes;
        let model_pt = pt.map_err(not_found_as_unknown)?.bytes;
        let contract_error = |cause: ContractError| RegistryError::Contract {
            bucket: self.model.bucket.clone(),
            key: json_key.clone(),
            cause,
        };
        let metadata = ModelMetadata::from_json(&metadata_json).map_err(contract_error)?;
        if metadata.version != version {
            return Err(contract_error(ContractError::FiledUnderOtherVersion {
                declared: metadata.version,
                filed_under: version.to_string(),
            }));
        }
        metadata
            .verify_checksum(&model_pt)
            .map_err(contract_error)?;
        // Only a declared model.onnx is fetched, and only after model.json vouches for it.
        let model_onnx = match &metadata.onnx_sha256 {
            None => None,
            Some(_) => {
                let onnx_key = self.model.object_key(version, "model.onnx");
                // Missing here is a broken version, not an unknown one: its model.json is there.
                let model_onnx = self.objects.get(&onnx_key).await?.bytes;
                metadata
                    .verify_onnx_checksum(&model_onnx)
                    .map_err(contract_error)?;
                Some(model_onnx)
            }
        };
        // The signature, when the version has one: whether it must, and holds, is the loader's
        // to decide (`MODEL_VERIFY_KEY`).
        let signature_key = self
            .model
            .object_key(version, crate::model::signature::SIGNATURE_FILE);
        let signature = self
            .objects
            .get_if_exists(&signature_key)
            .await?
            .map(|o| o.bytes);
        Ok(ModelArtifacts {
            metadata_json,
            model_pt,
            model_onnx,
            signature,
        })
    }

    /// Uploads a (validated) model as a new version; `model.json` goes last so readers never see a
    /// half-uploaded version. `progress` is told the bytes uploaded so far.
    pub async fn publish(
        &self,
        artifacts: &ModelArtifacts,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<String, RegistryError> {
        let metadata = ModelMetadata::from_json(&artifacts.metadata_json).map_err(|e| {
            RegistryError::Contract {
                bucket: self.model.bucket.clone(),
                key: "model.json".into(),
                cause: e,
            }
        })?;
        let version = metadata.version.clone();
        let json_key = self.model.object_key(&version, "model.json");
        if self.objects.exists(&json_key).await? {
            return Err(RegistryError::AlreadyPublished {
                version,
                bucket: self.model.bucket.clone(),
                key: json_key,
            });
        }
        let mut uploaded = 0;
        for (name, bytes) in artifacts.stored_files() {
            let content_type = match name {
                "model.json" => "application/json",
                _ => "application/octet-stream",
            };
            self.objects
                .put(
                    &self.model.object_key(&version, name),
                    bytes.to_vec(),
                    content_type,
                    Precondition::None,
                )
                .await?;
            uploaded += bytes.len() as u64;
            progress(uploaded);
        }
        Ok(version)
    }

    /// Fails unless `version` is published.
    async fn require_published(&self, version: &str) -> Result<(), RegistryError> {
        let json_key = self.model.object_key(version, "model.json");
        if !self.objects.exists(&json_key).await? {
            return Err(RegistryError::UnknownVersion {
                version: version.to_string(),
                bucket: self.model.bucket.clone(),
                key: json_key,
            });
        }
        Ok(())
    }

    /// Reads the alias, applies `change` and writes it back if it is still the one read; a
    /// concurrent writer makes this fail with a conflict, never lose its write.
    pub async fn update_alias<T>(
        &self,
        change: impl FnOnce(&mut Alias) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let Some((mut alias, etag)) = self.read_alias().await? else {
            return Err(RegistryError::NoAlias {
                bucket: self.model.bucket.clone(),
                key: self.model.alias_key(),
            });
        };
        let answer = change(&mut alias)?;
        self.write_alias(&alias, etag.as_deref()).await?;
        Ok(answer)
    }

    /// Points the alias at `version` (which must be published). The version it replaces stays
    /// `previous`, shadowed, for `probation`. Promoting the live version is a no-op. Returns the
    /// previous live version.
    pub async fn promote(
        &self,
        version: &str,
        probation: std::time::Duration,
    ) -> Result<Option<String>, RegistryError> {
        self.require_published(version).await?;
        let now = now_rfc3339();
        match self.read_alias().await? {
            None => {
                let alias = Alias {
                    version: version.to_string(),
                    history: vec![version.to_string()],
                    updated_at: now,
                    last_rollback: None,
                    challenger: None,
                    previous: None,
                    decisions: Vec::new(),
                };
                self.write_alias(&alias, None).await?;
                Ok(None)
            }
            Some((alias, _)) if alias.version == version => Ok(Some(alias.version)),
            Some((mut alias, etag)) => {
                let until = probation_end(probation);
                let previous = alias.make_live(version, &now, &until);
                alias.record(Decision {
                    action: DecisionAction::Promote,
                    version: version.to_string(),
                    against: Some(previous.clone()),
                    at: now,
                    trigger: "cli".into(),
                    acted: true,
                    reason: "promoted by hand".into(),
                    evidence: None,
                });
                self.write_alias(&alias, etag.as_deref()).await?;
                Ok(Some(previous))
            }
        }
    }

    /// Names a published version the challenger, in `mode`, on `fraction` of the series.
    pub async fn challenge(
        &self,
        version: &str,
        mode: ChallengeMode,
        fraction: f64,
    ) -> Result<Alias, RegistryError> {
        self.require_published(version).await?;
        self.update_alias(|alias| {
            alias.challenge(version, mode, fraction, &now_rfc3339())?;
            Ok(alias.clone())
        })
        .await
    }

    /// Applies a decision ([`Alias::apply`]) with a conditional write; `Ok(false)` when it
    /// was already recorded and nothing was written.
    pub async fn apply_decision(
        &self,
        decision: Decision,
        probation: std::time::Duration,
    ) -> Result<bool, RegistryError> {
        let Some((mut alias, etag)) = self.read_alias().await? else {
            return Err(RegistryError::NoAlias {
                bucket: self.model.bucket.clone(),
                key: self.model.alias_key(),
            });
        };
        if !alias.apply(decision, &probation_end(probation))? {
            return Ok(false);
        }
        self.write_alias(&alias, etag.as_deref()).await?;
        Ok(true)
    }

    /// Ends the challenge; returns the withdrawn version.
    pub async fn withdraw(&self) -> Result<String, RegistryError> {
        self.update_alias(|alias| Ok(alias.withdraw(&now_rfc3339(), "cli")?))
            .await
    }

    /// Moves the alias back to the version live before the current one. Idempotent per `trigger`:
    /// the same trigger twice rolls back once. `evidence` is the comparison that justified it,
    /// recorded with the decision.
    pub async fn rollback(
        &self,
        trigger: &str,
        evidence: Option<crate::monitor::verdict::Evidence>,
    ) -> Result<RollbackOutcome, RegistryError> {
        let Some((mut alias, etag)) = self.read_alias().await? else {
            return Err(RegistryError::NoAlias {
                bucket: self.model.bucket.clone(),
                key: self.model.alias_key(),
            });
        };
        if let Some(last) = &alias.last_rollback {
            if last.trigger == trigger {
                return Ok(RollbackOutcome::AlreadyApplied {
                    from: last.from.clone(),
                    to: last.to.clone(),
                });
            }
        }
        if alias.history.len() < 2 {
            return Err(RegistryError::NoPreviousVersion {
                name: self.model.name.clone(),
                current: alias.version.clone(),
            });
        }
        let from = alias.history.pop().expect("len >= 2");
        let to = alias.history.last().expect("len >= 1").clone();
        let now = now_rfc3339();
        alias.version = to.clone();
        alias.updated_at = now.clone();
        // Back on the previous version, its probation is over; nothing is on probation behind it.
        alias.previous = None;
        alias.record(Decision {
            action: DecisionAction::Rollback,
            version: from.clone(),
            against: Some(to.clone()),
            at: now.clone(),
            trigger: trigger.to_string(),
            acted: true,
            reason: match evidence {
                Some(_) => format!("{from} forecast worse than {to} on the same actuals"),
                None => "rolled back".into(),
            },
            evidence,
        });
        alias.last_rollback = Some(Rollback {
            trigger: trigger.to_string(),
            from: from.clone(),
            to: to.clone(),
            at: now,
        });
        self.write_alias(&alias, etag.as_deref()).await?;
        Ok(RollbackOutcome::RolledBack { from, to })
    }

    /// Published versions (those with a model.json), in key order.
    pub async fn list_versions(&self) -> Result<Vec<String>, RegistryError> {
        let prefix = format!("{}/", self.model.prefix());
        let versions = self
            .objects
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|key| key.strip_prefix(&prefix)?.strip_suffix("/model.json"))
            .filter(|version| !version.contains('/'))
            .map(str::to_owned)
            .collect();
        Ok(versions)
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// When a probation starting now ends.
fn probation_end(probation: std::time::Duration) -> String {
    let probation = chrono::Duration::from_std(probation).unwrap_or(chrono::Duration::days(7));
    (chrono::Utc::now() + probation).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How long a replaced version stays shadowed after a promotion, unless told otherwise.
pub const DEFAULT_PROBATION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_uris_name_a_model_and_optionally_a_version() {
        let live = RegistryRef::parse("s3://bucket/models/etth1").unwrap();
        assert_eq!(live.version, None);
        assert_eq!(live.alias_key(), "models/etth1/alias/live.json");
        let pinned = RegistryRef::parse("s3://bucket/models/etth1/1.0.0/").unwrap();
        assert_eq!(pinned.version.as_deref(), Some("1.0.0"));
        assert_eq!(
            pinned.object_key("1.0.0", "model.pt"),
            "models/etth1/1.0.0/model.pt"
        );
        for bad in [
            "s3://bucket",
            "s3://bucket/etth1",
            "s3://bucket/models/a/b/c",
            "http://x/models/a",
        ] {
            assert!(RegistryRef::parse(bad).is_err(), "{bad}");
        }
    }
}

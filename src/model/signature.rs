//! Signed models in the open standard: the OpenSSF model-signing format that `model_signing sign
//! key` (PyPI `model-signing`) writes as `model.sig` beside the model's files.
//!
//! A sha256 in `model.json` proves which bytes were published, not who published them: anyone who
//! may write the registry writes `model.json` too. A signature by the publisher's private key, and
//! a service that loads nothing its public key did not sign, closes that: a writer of the bucket
//! without the key cannot put a model (or an edited `model.json`) into service.
//!
//! `model.sig` is a Sigstore bundle (v0.3) whose DSSE envelope carries an in-toto statement; the
//! statement's predicate lists every file with its sha256. Verification, before any byte reaches
//! libtorch or ONNX Runtime ([`super::Model::load`]):
//!
//! 1. the envelope's ECDSA P-256 signature (DER, SHA-256) over the DSSE pre-authentication
//!    encoding of its payload verifies with the configured public key;
//! 2. the payload is an in-toto statement with the model-signing predicate type;
//! 3. every file the version loads is listed, with the sha256 of the bytes in hand.
//!
//! The key is set once per process ([`require_signatures`], from `MODEL_VERIFY_KEY`); from then
//! on every load verifies: cold start, the alias follower, a challenger, `forecast --model`, the
//! probe child.

use std::sync::OnceLock;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The signature's file name beside the model's files.
pub const SIGNATURE_FILE: &str = "model.sig";

const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// Why a version's signature does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("MODEL_VERIFY_KEY is not an EC P-256 public key in PEM: {0}")]
    Key(String),
    #[error("{SIGNATURE_FILE} is missing: with MODEL_VERIFY_KEY set, only models signed by its key load (model_signing sign key)")]
    Missing,
    #[error("{SIGNATURE_FILE} is not a model-signing bundle: {0}")]
    Malformed(String),
    #[error(
        "{SIGNATURE_FILE} was not signed by the key in MODEL_VERIFY_KEY (sha256 of its PEM: {key})"
    )]
    ForeignKey { key: String },
    #[error("{file} is not the file that was signed: its sha256 is {actual}, the signature lists {signed}")]
    FileChanged {
        file: String,
        actual: String,
        signed: String,
    },
    #[error("{file} is not covered by {SIGNATURE_FILE}")]
    Unsigned { file: String },
}

/// The publisher's public key.
#[derive(Debug, Clone)]
pub struct ModelVerifier {
    key: VerifyingKey,
    /// sha256 of the PEM, as the bundle's key hint gives it.
    fingerprint: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    dsse_envelope: Envelope,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Deserialize)]
struct Predicate {
    resources: Vec<Resource>,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

impl ModelVerifier {
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| SignatureError::Key(e.to_string()))?;
        Ok(ModelVerifier {
            key,
            fingerprint: hex(&Sha256::digest(pem.as_bytes())),
        })
    }

    /// Verifies `signature` (the bytes of `model.sig`) over `files` (every file the version
    /// loads, by name).
    pub fn verify(
        &self,
        signature: Option<&[u8]>,
        files: &[(&str, &[u8])],
    ) -> Result<(), SignatureError> {
        let signature = signature.ok_or(SignatureError::Missing)?;
        let malformed = |why: String| SignatureError::Malformed(why);
        let bundle: Bundle =
            serde_json::from_slice(signature).map_err(|e| malformed(e.to_string()))?;
        if bundle.media_type != BUNDLE_MEDIA_TYPE {
            return Err(malformed(format!("mediaType `{}`", bundle.media_type)));
        }
        let envelope = bundle.dsse_envelope;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(malformed(format!(
                "payloadType `{}`",
                envelope.payload_type
            )));
        }
        let base64 = base64::engine::general_purpose::STANDARD;
        let payload = base64
            .decode(&envelope.payload)
            .map_err(|e| malformed(format!("payload: {e}")))?;
        let signed = envelope
            .signatures
            .first()
            .ok_or_else(|| malformed("no signature in the envelope".into()))?;
        let der = base64
            .decode(&signed.sig)
            .map_err(|e| malformed(format!("signature: {e}")))?;
        let der =
            DerSignature::from_bytes(&der).map_err(|e| malformed(format!("signature: {e}")))?;
        self.key
            .verify(&pre_authentication_encoding(PAYLOAD_TYPE, &payload), &der)
            .map_err(|_| SignatureError::ForeignKey {
                key: self.fingerprint.clone(),
            })?;
        let statement: Statement =
            serde_json::from_slice(&payload).map_err(|e| malformed(format!("statement: {e}")))?;
        if statement.predicate_type != PREDICATE_TYPE {
            return Err(malformed(format!(
                "predicateType `{}`",
                statement.predicate_type
            )));
        }
        for (name, bytes) in files {
            let resource = statement
                .predicate
                .resources
                .iter()
                .find(|r| r.name == *name && r.algorithm == "sha256")
                .ok_or_else(|| SignatureError::Unsigned {
                    file: name.to_string(),
                })?;
            let actual = hex(&Sha256::digest(bytes));
            if !actual.eq_ignore_ascii_case(&resource.digest) {
                return Err(SignatureError::FileChanged {
                    file: name.to_string(),
                    actual,
                    signed: resource.digest.clone(),
                });
            }
        }
        Ok(())
    }
}

/// DSSE's pre-authentication encoding: what the signature covers.
fn pre_authentication_encoding(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut encoded = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    encoded.extend_from_slice(payload);
    encoded
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

static REQUIRED: OnceLock<ModelVerifier> = OnceLock::new();

/// From now on, every model this process loads must be signed by `verifier`'s key. Set once; a
/// second call keeps the first key.
pub fn require_signatures(verifier: ModelVerifier) {
    let _ = REQUIRED.set(verifier);
}

/// The key every load verifies with, when one is required.
pub fn required() -> Option<&'static ModelVerifier> {
    REQUIRED.get()
}

//! Watching the model in production: input drift, accuracy against actuals, and the evaluation
//! loop that joins logged forecasts with observed values.
//!
//! - [`drift`]: input drift calibrated on the training windows, out-of-range share.
//! - [`accuracy`]: MAE, RMSE, WAPE, bias and MASE, overall and per horizon bucket.
//! - [`observations`]: actuals, and the `POST /v1/observations` body that carries them.
//! - [`store`]: forecasts and actuals as JSON Lines on S3, partitioned by date.
//! - [`evaluate`]: the join, the scores, the report and its chart.
//! - [`calibration`]: prediction intervals recalibrated from the latest scored errors.
//! - [`compare`]: two versions on the same actuals: mergeable loss differentials and the
//!   Diebold-Mariano test (HAC over the forecasts' overlap, HLN, Holm across buckets).
//! - [`verdict`]: a comparison per horizon bucket, its evidence, and the rule that reads it
//!   (better, worse, no difference, undecided).

pub mod accuracy;
pub mod calibration;
pub mod compare;
pub mod drift;
pub mod evaluate;
pub mod observations;
pub mod store;
pub mod verdict;

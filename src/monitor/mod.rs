//! Watching the model in production: input drift, accuracy against actuals, and the evaluation
//! loop that joins logged forecasts with observed values.
//!
//! - [`drift`]: input drift calibrated on the training windows, out-of-range share.
//! - [`accuracy`]: MAE, RMSE, WAPE, bias and MASE, overall and per horizon bucket.
//! - [`observations`]: actuals, and the `POST /v1/observations` body that carries them.
//! - [`store`]: forecasts and actuals as JSON Lines on S3, partitioned by date.
//! - [`evaluate`]: the join, the scores, the report and its chart.
//! - [`calibration`]: prediction intervals recalibrated from the latest scored errors.

pub mod accuracy;
pub mod calibration;
pub mod drift;
pub mod evaluate;
pub mod observations;
pub mod store;

//! Fuzzes everything a client controls before libtorch: the forecast and observation bodies, the
//! CSV and JSON Lines file formats, and the preprocessing of whatever passes validation.
//! Invariants: no panic; accepted series have the declared shape and only finite values; the
//! network input is finite or the request is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lstm_forecast::forecast::{parse_forecast_request, RequestShape};
use lstm_forecast::monitor::observations::parse_observations;
use lstm_forecast::input::{parse_csv, parse_json_lines};
use lstm_forecast::model::contract::ModelMetadata;
use lstm_forecast::model::preprocess::Pipeline;
use std::sync::OnceLock;

fn metadata() -> &'static ModelMetadata {
    static METADATA: OnceLock<ModelMetadata> = OnceLock::new();
    METADATA.get_or_init(|| {
        let mut m = ModelMetadata::from_json(lstm_forecast::source::BUNDLED_MODEL_JSON).unwrap();
        // A short window keeps random inputs able to pass validation now and then.
        m.input.window = 4;
        m
    })
}

fuzz_target!(|data: &[u8]| {
    let metadata = metadata();
    let shape = RequestShape { window: 4, max_series: 8, ..RequestShape::new(metadata, 8) };
    if let Ok(series) = parse_forecast_request(data, &shape) {
        let pipeline = Pipeline::new(metadata);
        for s in &series {
            assert!(s.values.len() >= 4 && s.values.iter().all(|v| v.is_finite()));
            let mut out = [0f32; 4];
            let restore = pipeline.normalize_into(s.window(4), &mut Vec::new(), &mut out);
            let _ = restore.apply(&out);
        }
    }
    let now = lstm_forecast::time::parse_rfc3339("2026-01-01T00:00:00Z").expect("a valid time");
    let _ = parse_observations(data, 1000, now);
    let _ = parse_csv(data, &shape);
    let _ = parse_json_lines(data, &shape);
});

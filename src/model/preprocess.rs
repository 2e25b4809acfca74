//! The preprocessing declared in `model.json`, applied to each window and inverted on each forecast.
//!
//! Arithmetic is done in f64 and only the network input is rounded to f32, in the same order as the
//! training script (`model_artifacts/train/train.py`), so forecasts match PyTorch's to ~1e-7.

use super::contract::{ModelMetadata, Preprocessing};

/// A ready-to-run preprocessing pipeline for one model.
#[derive(Debug, Clone)]
pub struct Pipeline {
    steps: Vec<Preprocessing>,
    window: usize,
    features: usize,
    target: usize,
}

/// What is needed to map one series' network output back to the original scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    /// Inverse operations on the target, in the order they must be applied.
    inverse: Vec<Inverse>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Inverse {
    Add(f64),
    Scale { std: f64, mean: f64 },
}

impl Pipeline {
    pub fn new(metadata: &ModelMetadata) -> Self {
        Pipeline {
            steps: metadata.preprocessing.clone(),
            window: metadata.input.window,
            features: metadata.input.features.len(),
            target: metadata.target_index().expect("checked at load"),
        }
    }

    /// Normalises one window (row-major `[window][features]`, original scale) into `out` (same
    /// layout, f32) and returns what undoes it on the output.
    ///
    /// Panics if the slices do not have `window * features` elements: callers validate shapes first.
    pub fn normalize_into(
        &self,
        window: &[f64],
        scratch: &mut Vec<f64>,
        out: &mut [f32],
    ) -> Restore {
        let n = self.window * self.features;
        assert_eq!(
            window.len(),
            n,
            "window shape is validated before preprocessing"
        );
        assert_eq!(out.len(), n);
        scratch.clear();
        scratch.extend_from_slice(window);
        let mut inverse = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            match step {
                Preprocessing::ZScore { mean, std } => {
                    for row in scratch.chunks_exact_mut(self.features) {
                        for ((x, m), s) in row.iter_mut().zip(mean).zip(std) {
                            *x = (*x - m) / s;
                        }
                    }
                    inverse.push(Inverse::Scale {
                        std: std[self.target],
                        mean: mean[self.target],
                    });
                }
                Preprocessing::SubtractLast => {
                    let last_row = scratch[n - self.features..].to_vec();
                    for row in scratch.chunks_exact_mut(self.features) {
                        for (x, last) in row.iter_mut().zip(&last_row) {
                            *x -= last;
                        }
                    }
                    inverse.push(Inverse::Add(last_row[self.target]));
                }
            }
        }
        for (o, x) in out.iter_mut().zip(scratch.iter()) {
            *o = *x as f32;
        }
        inverse.reverse();
        Restore { inverse }
    }
}

impl Restore {
    /// Maps network outputs for the target back to the original scale.
    pub fn apply(&self, output: &[f32]) -> Vec<f64> {
        output
            .iter()
            .map(|&y| {
                self.inverse.iter().fold(y as f64, |y, op| match *op {
                    Inverse::Add(offset) => y + offset,
                    Inverse::Scale { std, mean } => y * std + mean,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(
        steps: Vec<Preprocessing>,
        window: usize,
        features: usize,
        target: usize,
    ) -> Pipeline {
        Pipeline {
            steps,
            window,
            features,
            target,
        }
    }

    #[test]
    fn z_score_then_subtract_last_matches_the_training_script() {
        // GIVEN train mean 10, std 2 and the window [12, 14, 16]
        let p = pipeline(
            vec![
                Preprocessing::ZScore {
                    mean: vec![10.0],
                    std: vec![2.0],
                },
                Preprocessing::SubtractLast,
            ],
            3,
            1,
            0,
        );
        let mut out = [0f32; 3];
        // WHEN normalised: z = [1, 2, 3], minus the last z (3)
        let restore = p.normalize_into(&[12.0, 14.0, 16.0], &mut Vec::new(), &mut out);
        // THEN the network sees [-2, -1, 0] and an output of 0.5 maps to (0.5 + 3) * 2 + 10
        assert_eq!(out, [-2.0, -1.0, 0.0]);
        assert_eq!(restore.apply(&[0.5, 0.0]), vec![17.0, 16.0]);
    }

    #[test]
    fn multi_feature_windows_are_normalised_per_column_and_restored_on_the_target() {
        let p = pipeline(
            vec![
                Preprocessing::ZScore {
                    mean: vec![0.0, 100.0],
                    std: vec![1.0, 10.0],
                },
                Preprocessing::SubtractLast,
            ],
            2,
            2,
            1,
        );
        let mut out = [0f32; 4];
        let restore = p.normalize_into(&[1.0, 110.0, 3.0, 130.0], &mut Vec::new(), &mut out);
        assert_eq!(out, [-2.0, -2.0, 0.0, 0.0]);
        // target z_last = 3 -> (1 + 3) * 10 + 100
        assert_eq!(restore.apply(&[1.0]), vec![140.0]);
    }

    #[test]
    fn an_empty_pipeline_is_the_identity() {
        let p = pipeline(vec![], 2, 1, 0);
        let mut out = [0f32; 2];
        let restore = p.normalize_into(&[1.5, -2.5], &mut Vec::new(), &mut out);
        assert_eq!(out, [1.5, -2.5]);
        assert_eq!(restore.apply(&[4.0]), vec![4.0]);
    }
}

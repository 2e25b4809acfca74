//! The report's chart, an SVG a person can open: actuals, forecast trajectories and their
//! intervals for the series with the most scored forecasts, and MAE per horizon bucket.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};

use super::charted::{Band, ChartSeries};
use super::figures::{Evaluation, VersionScores};

/// The plot area's size and margin, in pixels; the MAE bars go below it.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
const PAD: f64 = 50.0;

/// What the plot area shows: from a day before the first forecast step to the last, and the
/// range of the values in that time.
struct Frame {
    t0: DateTime<Utc>,
    t1: DateTime<Utc>,
    lo: f64,
    hi: f64,
    /// `t1 - t0` in seconds, at least one.
    span: f64,
}

impl Frame {
    fn around(series: &ChartSeries) -> Frame {
        let points: Vec<(DateTime<Utc>, f64)> = series
            .actuals
            .iter()
            .copied()
            .chain(series.forecasts.iter().flatten().copied())
            .collect();
        let t0 = series
            .forecasts
            .iter()
            .flatten()
            .map(|p| p.0)
            .min()
            .unwrap_or_default()
            - Duration::hours(24);
        let t1 = series
            .forecasts
            .iter()
            .flatten()
            .map(|p| p.0)
            .max()
            .unwrap_or_default();
        let in_range: Vec<f64> = points
            .iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .map(|p| p.1)
            .collect();
        let (lo, hi) = in_range
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let (lo, hi) = if lo < hi {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        };
        let span = (t1 - t0).num_seconds().max(1) as f64;
        Frame {
            t0,
            t1,
            lo,
            hi,
            span,
        }
    }

    fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.t0 && t <= self.t1
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        PAD + (t - self.t0).num_seconds() as f64 / self.span * (WIDTH - 2.0 * PAD)
    }

    fn y(&self, v: f64) -> f64 {
        HEIGHT - PAD - (v - self.lo) / (self.hi - self.lo) * (HEIGHT - 2.0 * PAD)
    }

    /// `x,y` of a point, as polyline and polygon points list them.
    fn point(&self, t: DateTime<Utc>, v: f64) -> String {
        format!("{:.1},{:.1}", self.x(t), self.y(v))
    }
}

impl Evaluation {
    /// A chart a person can open: actuals and forecast trajectories of one series, and MAE per
    /// horizon bucket.
    pub fn chart_svg(&self) -> String {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{}" font-family="sans-serif" font-size="12">"#,
            HEIGHT + 220.0
        );
        let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let Some(series) = &self.chart_series else {
            let _ = write!(
                svg,
                r#"<text x="20" y="40">No forecast could be scored in this window (no matching actuals).</text></svg>"#
            );
            return svg;
        };
        let frame = Frame::around(series);
        draw_title_and_axes(&mut svg, &frame, &series.series_id);
        // Intervals first, under the lines.
        draw_bands(&mut svg, &frame, &series.bands);
        draw_forecasts(&mut svg, &frame, &series.forecasts);
        draw_actuals(&mut svg, &frame, &series.actuals);
        draw_legend(&mut svg, series);
        // MAE per horizon bucket, first version.
        if let Some((version, scores)) = self.by_version.iter().next() {
            draw_mae_by_bucket(&mut svg, version, scores);
        }
        svg.push_str("</svg>");
        svg
    }
}

fn draw_title_and_axes(svg: &mut String, frame: &Frame, series_id: &str) {
    let _ = write!(
        svg,
        r#"<text x="{PAD}" y="24" font-size="15">Forecast vs actual: series {} ({} to {}, UTC)</text>"#,
        xml_escape(series_id),
        frame.t0.format("%Y-%m-%d %H:%M"),
        frame.t1.format("%Y-%m-%d %H:%M")
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
        HEIGHT - PAD,
        WIDTH - PAD,
        HEIGHT - PAD
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="#999"/>"##,
        HEIGHT - PAD
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="{}">{:.2}</text><text x="4" y="{}">{:.2}</text>"#,
        frame.y(frame.hi) + 4.0,
        frame.hi,
        frame.y(frame.lo),
        frame.lo
    );
}

/// Each band is one polygon: its upper edge forward, then its lower edge back, clamped to the
/// plotted range.
fn draw_bands(svg: &mut String, frame: &Frame, bands: &[Band]) {
    for band in bands {
        let edge: Vec<String> = band
            .points
            .iter()
            .map(|(t, _, upper)| frame.point(*t, upper.clamp(frame.lo, frame.hi)))
            .chain(
                band.points
                    .iter()
                    .rev()
                    .map(|(t, lower, _)| frame.point(*t, lower.clamp(frame.lo, frame.hi))),
            )
            .collect();
        let _ = write!(
            svg,
            r##"<polygon fill="#1f77b4" fill-opacity="0.08" stroke="none" points="{}"/>"##,
            edge.join(" ")
        );
    }
}

fn draw_forecasts(svg: &mut String, frame: &Frame, forecasts: &[Vec<(DateTime<Utc>, f64)>]) {
    for trajectory in forecasts {
        let path: Vec<String> = trajectory
            .iter()
            .map(|(t, v)| frame.point(*t, *v))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-opacity="0.6" stroke-width="1.5" points="{}"/>"##,
            path.join(" ")
        );
    }
}

fn draw_actuals(svg: &mut String, frame: &Frame, actuals: &[(DateTime<Utc>, f64)]) {
    let path: Vec<String> = actuals
        .iter()
        .filter(|(t, _)| frame.contains(*t))
        .map(|(t, v)| frame.point(*t, *v))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="black" stroke-width="2" points="{}"/>"##,
        path.join(" ")
    );
}

fn draw_legend(svg: &mut String, series: &ChartSeries) {
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" fill="black">— actual</text><text x="{}" y="{}" fill="#1f77b4">— forecasts (latest {})</text>"##,
        WIDTH - 300.0,
        PAD - 8.0,
        WIDTH - 210.0,
        PAD - 8.0,
        series.forecasts.len()
    );
    if let Some(Band { level, .. }) = series.bands.first() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" fill="#1f77b4" fill-opacity="0.6">shaded: their {}% intervals</text>"##,
            WIDTH - 300.0,
            PAD + 8.0,
            level * 100.0
        );
    }
}

/// One bar per horizon bucket, below the plot, scaled to the largest MAE.
fn draw_mae_by_bucket(svg: &mut String, version: &str, scores: &VersionScores) {
    let top = HEIGHT + 30.0;
    let _ = write!(
        svg,
        r#"<text x="{PAD}" y="{top}" font-size="15">MAE by horizon bucket (model version {})</text>"#,
        xml_escape(version)
    );
    let max = scores
        .horizon_buckets
        .values()
        .map(|s| s.mae)
        .fold(0.0, f64::max)
        .max(1e-9);
    for (i, (bucket, s)) in scores.horizon_buckets.iter().enumerate() {
        let bar = s.mae / max * 400.0;
        let row = top + 20.0 + i as f64 * 40.0;
        let _ = write!(
            svg,
            r##"<text x="{PAD}" y="{}">{}</text><rect x="{}" y="{row}" width="{bar:.1}" height="26" fill="#ff7f0e"/><text x="{}" y="{}">{:.4} (n={})</text>"##,
            row + 18.0,
            xml_escape(bucket),
            PAD + 70.0,
            PAD + 80.0 + bar,
            row + 18.0,
            s.mae,
            s.count
        );
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use crate::monitor::evaluate::fixtures::{obs, record, run};

    #[test]
    fn the_chart_is_an_svg_with_both_lines() {
        let forecasts = vec![record("a", 0, &[11.0, 12.0], "1")];
        let (e, _) = run(
            &forecasts,
            &[obs("a", 1, 12.0), obs("a", 2, 13.0)],
            &[],
            None,
        );
        let svg = e.chart_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("polyline") && svg.contains("MAE by horizon bucket"));
    }
}

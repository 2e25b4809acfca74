//! The report's comparison chart (`comparison.svg`): for each pair of versions compared so far,
//! the cumulative loss differential (challenger minus reference, squared error, mean per origin)
//! against the origin's time. A line that keeps falling is a challenger that keeps forecasting
//! better; one that wanders around zero is no difference.

use std::fmt::Write as _;

use super::figures::ComparedVersions;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 360.0;
const PAD: f64 = 60.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// The chart, or `None` when no pair was compared.
pub(super) fn comparison_svg(compared: &[ComparedVersions]) -> Option<String> {
    let lines: Vec<&ComparedVersions> = compared
        .iter()
        .filter(|c| c.cumulative.len() >= 2)
        .collect();
    if lines.is_empty() {
        return None;
    }
    let points = lines.iter().flat_map(|c| c.cumulative.iter());
    let (t0, t1, lo, hi) = points.fold(
        (i64::MAX, i64::MIN, 0.0f64, 0.0f64),
        |(t0, t1, lo, hi), &(t, v)| (t0.min(t), t1.max(t), lo.min(v), hi.max(v)),
    );
    let (span, range) = ((t1 - t0).max(1) as f64, (hi - lo).max(1e-12));
    let x = |t: i64| PAD + (t - t0) as f64 / span * (WIDTH - 2.0 * PAD);
    let y = |v: f64| PAD + (hi - v) / range * (HEIGHT - 2.0 * PAD);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{PAD}" y="24" font-size="15">Cumulative loss differential (challenger - reference, squared error, mean per origin); below 0: the challenger forecast better</text>"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
        y(0.0),
        WIDTH - PAD
    );
    for (i, compared) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = compared
            .cumulative
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{PAD}" y="{:.1}" fill="{colour}">{} vs {}</text>"#,
            HEIGHT - PAD / 2.0 + 14.0 * i as f64 - 10.0,
            escape(&compared.challenger),
            escape(&compared.reference)
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

//! Results: medians and spreads of repeated runs, the comparison with the
//! baseline, targets, and the outputs (a table, JSON, an SVG plot).

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// The values of one measurement over the repeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    pub runs: Vec<f64>,
}

impl Series {
    pub fn push(&mut self, value: f64) {
        self.runs.push(value);
    }

    pub fn median(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// (max - min) / median, in percent: how far apart the repeats were.
    pub fn spread_percent(&self) -> f64 {
        let min = self.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let median = self.median();
        if self.runs.len() < 2 || median == 0.0 {
            return 0.0;
        }
        (max - min) / median.abs() * 100.0
    }
}

/// How warren's figure is compared with the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// warren ÷ direct (throughputs: higher is better).
    Ratio,
    /// warren − direct (latencies: what warren adds).
    Added,
    /// warren's own figure (CPU, memory): no baseline.
    Own,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(bound) => value >= bound,
            Goal::AtMost(bound) => value <= bound,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtLeast(bound) => format!(">= {}", number(bound)),
            Goal::AtMost(bound) => format!("<= {}", number(bound)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub unit: String,
    pub direct: Option<Series>,
    pub warren: Series,
    pub compare: Compare,
    pub goal: Option<Goal>,
}

impl Row {
    pub fn new(name: impl Into<String>, unit: &str, compare: Compare) -> Self {
        Row {
            name: name.into(),
            unit: unit.to_string(),
            direct: (compare != Compare::Own).then(Series::default),
            warren: Series::default(),
            compare,
            goal: None,
        }
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// The figure the goal applies to.
    pub fn outcome(&self) -> f64 {
        let warren = self.warren.median();
        match (&self.direct, self.compare) {
            (Some(direct), Compare::Ratio) => warren / direct.median(),
            (Some(direct), Compare::Added) => warren - direct.median(),
            _ => warren,
        }
    }

    pub fn met(&self) -> Option<bool> {
        self.goal.map(|goal| goal.met(self.outcome()))
    }
}

fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn cell(series: &Series) -> String {
    format!(
        "{} ±{:.0}%",
        number(series.median()),
        series.spread_percent()
    )
}

/// The results as a fixed-width table.
pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![[
        "scenario".to_string(),
        "unit".into(),
        "direct".into(),
        "warren".into(),
        "warren vs direct".into(),
        "target".into(),
        "".into(),
    ]];
    for row in rows {
        let comparison = match row.compare {
            Compare::Ratio => format!("{:.3}x", row.outcome()),
            Compare::Added => format!("{:+.1} {}", row.outcome(), row.unit),
            Compare::Own => "".into(),
        };
        lines.push([
            row.name.clone(),
            row.unit.clone(),
            row.direct.as_ref().map_or_else(String::new, cell),
            cell(&row.warren),
            comparison,
            row.goal.map_or_else(String::new, Goal::describe),
            match row.met() {
                Some(true) => "ok".into(),
                Some(false) => "MISSED".into(),
                None => "".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|col| {
            lines
                .iter()
                .map(|l| l[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// An SVG bar chart of warren ÷ direct for the throughput rows, with the
/// parity line and each row's target, on a log scale (0.25x to the next
/// power of two above the largest ratio), so 0.9x and 24x both read well.
pub fn plot(rows: &[Row], title: &str) -> String {
    let ratios: Vec<&Row> = rows
        .iter()
        .filter(|r| r.compare == Compare::Ratio)
        .collect();
    let (label_width, bar_width, row_height, top) = (260.0, 520.0, 26.0, 56.0);
    let largest = ratios
        .iter()
        .map(|r| r.outcome())
        .filter(|r| r.is_finite())
        .fold(2.0, f64::max);
    let (low, high) = (-2.0, largest.log2().ceil());
    let x = |value: f64| {
        let position = (value.max(0.25).log2() - low) / (high - low);
        label_width + position.clamp(0.0, 1.0) * bar_width
    };
    let height = top + ratios.len() as f64 * row_height + 40.0;
    let width = label_width + bar_width + 90.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="12" y="24" font-size="16" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="12" y="44" fill="#555">warren ÷ direct, median of the runs, log scale; right of the grey line = faster through warren; black ticks = targets</text>"##
    );
    for (i, row) in ratios.iter().enumerate() {
        plot_row(&mut svg, row, top + i as f64 * row_height, label_width, &x);
    }
    let bottom = top + ratios.len() as f64 * row_height;
    let _ = writeln!(
        svg,
        r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{bottom}" stroke="#999" stroke-dasharray="4 3"/>"##,
        x(1.0)
    );
    for power in (low as i32)..=(high as i32) {
        let tick = 2f64.powi(power);
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{tick}x</text>"##,
            x(tick),
            bottom + 18.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// One row's bar, value and target tick, at height `y`.
fn plot_row(svg: &mut String, row: &Row, y: f64, label_width: f64, x: &impl Fn(f64) -> f64) {
    let ratio = row.outcome();
    let colour = match row.met() {
        Some(false) => "#d9534f",
        _ => "#2b7bba",
    };
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="end">{}</text>"##,
        label_width - 8.0,
        y + 17.0,
        escape(&row.name)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{label_width}" y="{}" width="{:.1}" height="18" fill="{colour}"/>"##,
        y + 4.0,
        (x(ratio) - label_width).max(1.0)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{}">{ratio:.2}x</text>"##,
        x(ratio) + 6.0,
        y + 17.0
    );
    if let Some(Goal::AtLeast(bound) | Goal::AtMost(bound)) = row.goal {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#000" stroke-width="2"/>"##,
            x(bound),
            y + 1.0,
            y + 25.0
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let series = Series {
            runs: vec![10.0, 30.0, 20.0],
        };
        assert_eq!(series.median(), 20.0);
        assert_eq!(series.spread_percent(), 100.0);
        let even = Series {
            runs: vec![1.0, 2.0, 3.0, 4.0],
        };
        assert_eq!(even.median(), 2.5);
    }

    #[test]
    fn goals_apply_to_the_comparison() {
        let mut row = Row::new("publish", "msg/s", Compare::Ratio).goal(Goal::AtLeast(0.97));
        row.direct.as_mut().unwrap().push(100.0);
        row.warren.push(96.0);
        assert_eq!(row.met(), Some(false));
        row.warren.push(100.0);
        assert_eq!(row.met(), Some(true));
        let mut latency = Row::new("p50", "µs", Compare::Added).goal(Goal::AtMost(20.0));
        latency.direct.as_mut().unwrap().push(100.0);
        latency.warren.push(115.0);
        assert_eq!(latency.outcome(), 15.0);
        assert_eq!(latency.met(), Some(true));
    }
}

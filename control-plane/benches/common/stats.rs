//! Figures measured more than once: every run's value and its min, median and max; latency
//! percentiles.

use std::time::Duration;

use serde_json::{Value, json};

/// One figure over several runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Every run's value, in run order.
    pub runs: Vec<f64>,
    pub min: f64,
    /// The middle value; of an even count, the mean of the middle two.
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// `None` without runs.
    pub fn of(runs: &[f64]) -> Option<Self> {
        let mut sorted = runs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Some(Self {
            runs: runs.to_vec(),
            min,
            median,
            max,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({ "runs": self.runs, "min": self.min, "median": self.median, "max": self.max })
    }

    /// `min / median / max` with `precision` decimals; the value alone for one run.
    pub fn cell(&self, precision: usize) -> String {
        if self.runs.len() == 1 {
            return format!("{:.precision$}", self.median);
        }
        format!(
            "{:.precision$} / {:.precision$} / {:.precision$}",
            self.min, self.median, self.max
        )
    }
}

/// The `p` quantile (0..=1) of `sorted` in milliseconds: the nearest rank, rounded.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

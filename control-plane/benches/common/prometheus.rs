//! A histogram's `_sum` and `_count` read from Prometheus text (`GET /metrics`), to difference
//! two scrapes around a measurement.

/// A histogram's totals over the series that match a label filter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HistogramTotals {
    /// The observations' sum (seconds, for `_seconds` histograms).
    pub sum: f64,
    pub count: f64,
}

impl HistogramTotals {
    /// The totals of histogram `name` in `text`, added over every series whose labels hold all
    /// of `matching` (`&[]`: every series). A histogram absent from `text` has zero totals: the
    /// control plane registers a series at its first observation.
    pub fn read(text: &str, name: &str, matching: &[(&str, &str)]) -> Self {
        let mut totals = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (field, rest) = if let Some(rest) = rest.strip_prefix("_sum") {
                (&mut totals.sum, rest)
            } else if let Some(rest) = rest.strip_prefix("_count") {
                (&mut totals.count, rest)
            } else {
                continue;
            };
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => match rest.split_once('}') {
                    Some(split) => split,
                    None => continue,
                },
                None => ("", rest),
            };
            // A label-less `name_sum 1.5` must not match `name_sum_other 1.5`.
            if labels.is_empty() && !value.starts_with(' ') {
                continue;
            }
            let labels = parse_labels(labels);
            if !matching
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            {
                continue;
            }
            // An optional timestamp may follow the value.
            if let Some(v) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                *field += v;
            }
        }
        totals
    }

    /// What was observed between `before` and `self`.
    pub fn since(self, before: Self) -> Self {
        Self {
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }
}

/// `k="v",k2="v2"` into pairs; escapes (`\"`, `\\`, `\n`) in values undone.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() || chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
}

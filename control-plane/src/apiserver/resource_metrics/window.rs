//! Usage from cumulative counters, as metrics-server's storage computes it: a CPU rate needs two
//! samples of the same process lifetime (the same start time), and its window is the time
//! between them; memory is the latest working set.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// One sample of a node's or a container's counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// CPU time used since `start`, in seconds.
    pub cpu_seconds: f64,
    /// The working set, in bytes.
    pub memory_bytes: f64,
    /// When the agent read the counters.
    pub at: DateTime<Utc>,
    /// When the container started (seconds since the epoch); a change means a restart, whose
    /// counters start again from zero.
    pub start: Option<f64>,
}

/// Usage over one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub nanocores: i64,
    pub memory_bytes: i64,
    /// The later sample's time.
    pub timestamp: DateTime<Utc>,
    /// The time between the two samples, in nanoseconds.
    pub window_nanos: i64,
}

/// The last two samples of one node or container.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    prev: Option<Point>,
    last: Point,
}

impl Series {
    pub fn new(point: Point) -> Self {
        Self {
            prev: None,
            last: point,
        }
    }

    /// Takes a new sample; one no newer than the last is ignored (the agent served the same
    /// collection twice), one of another lifetime starts the series again.
    pub fn push(&mut self, point: Point) {
        if point.at <= self.last.at {
            return;
        }
        if point.start != self.last.start || point.cpu_seconds < self.last.cpu_seconds {
            *self = Self::new(point);
            return;
        }
        self.prev = Some(std::mem::replace(&mut self.last, point));
    }

    /// Usage between the last two samples, once there are two.
    pub fn usage(&self) -> Option<Usage> {
        let prev = self.prev?;
        let window = self.last.at - prev.at;
        let window_nanos = window.num_nanoseconds()?;
        if window_nanos <= 0 {
            return None;
        }
        let cpu = (self.last.cpu_seconds - prev.cpu_seconds) * 1e9 / (window_nanos as f64 / 1e9);
        Some(Usage {
            nanocores: cpu.round() as i64,
            memory_bytes: self.last.memory_bytes.max(0.0).round() as i64,
            timestamp: self.last.at,
            window_nanos,
        })
    }
}

/// What one node's latest scrapes say: the node's own series and its containers'.
#[derive(Clone, Debug, Default)]
pub struct NodeSeries {
    pub node: Option<Series>,
    /// By namespace, pod and container name.
    pub containers: HashMap<ContainerKey, Series>,
}

/// A container by namespace, pod and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// One scrape of a node: its own sample and its containers'.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub node: Option<Point>,
    pub containers: HashMap<ContainerKey, Point>,
}

impl NodeSeries {
    /// Takes a scrape: containers it no longer has are gone (their pods were deleted).
    pub fn push(&mut self, scrape: Scrape) {
        match (&mut self.node, scrape.node) {
            (Some(series), Some(point)) => series.push(point),
            (series, point) => *series = point.map(Series::new),
        }
        self.containers
            .retain(|key, _| scrape.containers.contains_key(key));
        for (key, point) in scrape.containers {
            match self.containers.get_mut(&key) {
                Some(series) => series.push(point),
                None => {
                    self.containers.insert(key, Series::new(point));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at(seconds: i64, cpu: f64, start: Option<f64>) -> Point {
        Point {
            cpu_seconds: cpu,
            memory_bytes: 4096.0,
            at: Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap(),
            start,
        }
    }

    #[test]
    fn the_rate_is_the_cpu_used_between_two_samples_over_their_window() {
        let mut series = Series::new(at(0, 10.0, Some(1.0)));
        assert_eq!(series.usage(), None, "one sample gives no rate");
        series.push(at(15, 13.0, Some(1.0)));
        let usage = series.usage().unwrap();
        assert_eq!(usage.nanocores, 200_000_000, "3 s of CPU in 15 s: 200m");
        assert_eq!(usage.window_nanos, 15_000_000_000);
        assert_eq!(usage.memory_bytes, 4096);
        assert_eq!(usage.timestamp, at(15, 0.0, None).at);
        // The same collection served again changes nothing.
        series.push(at(15, 13.0, Some(1.0)));
        assert_eq!(series.usage().unwrap().nanocores, 200_000_000);
    }

    #[test]
    fn a_restart_starts_the_series_again() {
        let mut series = Series::new(at(0, 10.0, Some(1.0)));
        series.push(at(15, 13.0, Some(1.0)));
        series.push(at(30, 0.5, Some(20.0)));
        assert_eq!(
            series.usage(),
            None,
            "a new lifetime needs two samples of its own"
        );
        series.push(at(45, 2.0, Some(20.0)));
        assert_eq!(series.usage().unwrap().nanocores, 100_000_000);
        // A counter going backwards is a restart too, even with the same start time.
        series.push(at(60, 1.0, Some(20.0)));
        assert_eq!(series.usage(), None);
    }

    #[test]
    fn containers_missing_from_a_scrape_are_forgotten() {
        let key = |pod: &str| ContainerKey {
            namespace: "default".into(),
            pod: pod.into(),
            container: "app".into(),
        };
        let mut node = NodeSeries::default();
        node.push(Scrape {
            node: Some(at(0, 100.0, None)),
            containers: [
                (key("a"), at(0, 1.0, Some(1.0))),
                (key("b"), at(0, 1.0, Some(1.0))),
            ]
            .into(),
        });
        node.push(Scrape {
            node: Some(at(15, 115.0, None)),
            containers: [(key("a"), at(15, 2.5, Some(1.0)))].into(),
        });
        assert_eq!(
            node.node.as_ref().unwrap().usage().unwrap().nanocores,
            1_000_000_000
        );
        assert_eq!(node.containers.len(), 1);
        assert_eq!(
            node.containers[&key("a")].usage().unwrap().nanocores,
            100_000_000
        );
    }
}

//! The benches' pure helpers (statistics over runs, `/proc/<pid>/stat` CPU time, Prometheus
//! histogram totals), tested here: the benches build with `harness = false`, where `#[test]`
//! functions never run.

#![allow(dead_code, reason = "only the benches call some helpers")]

#[path = "../../benches/common/proc.rs"]
mod proc;
#[path = "../../benches/common/prometheus.rs"]
mod prometheus;
#[path = "../../benches/common/stats.rs"]
mod stats;

mod proc_tests {
    use super::proc::*;

    #[test]
    fn stat_ticks_adds_utime_and_stime_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (apiary (x) y) S 1 4242 4242 0 -1 4194560 9313 0 0 0 1234 567 8 9 20 0 \
                    17 0 12345 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        assert_eq!(stat_ticks(stat), Some(1234 + 567));
    }

    #[test]
    fn stat_ticks_refuses_a_truncated_line() {
        assert_eq!(stat_ticks("4242 (apiary) S 1 4242"), None);
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(clock_ticks() >= 1.0);
    }
}

mod prometheus_tests {
    use super::prometheus::*;

    const SCRAPE: &str = r#"# HELP scheduler_scheduling_attempt_duration_seconds Scheduling attempt latency
# TYPE scheduler_scheduling_attempt_duration_seconds histogram
scheduler_scheduling_attempt_duration_seconds_sum{result="scheduled",profile="default-scheduler"} 2.5
scheduler_scheduling_attempt_duration_seconds_count{result="scheduled",profile="default-scheduler"} 1000
scheduler_scheduling_attempt_duration_seconds_bucket{le="0.001",result="scheduled",profile="default-scheduler"} 10
scheduler_scheduling_attempt_duration_seconds_sum{result="unschedulable",profile="default-scheduler"} 0.5
scheduler_scheduling_attempt_duration_seconds_count{result="unschedulable",profile="default-scheduler"} 20
scheduler_scheduling_attempt_duration_seconds_sum_other 99
other_sum{result="scheduled"} 7
plain_sum 3 1700000000000
plain_count 6
escaped_sum{path="a\"b,c\\",result="scheduled"} 4
escaped_count{path="a\"b,c\\",result="scheduled"} 8
"#;
    const NAME: &str = "scheduler_scheduling_attempt_duration_seconds";

    #[test]
    fn totals_add_every_series_that_matches_the_filter() {
        let all = HistogramTotals::read(SCRAPE, NAME, &[]);
        assert_eq!((all.sum, all.count), (3.0, 1020.0));
        let scheduled = HistogramTotals::read(SCRAPE, NAME, &[("result", "scheduled")]);
        assert_eq!((scheduled.sum, scheduled.count), (2.5, 1000.0));
        let none = HistogramTotals::read(SCRAPE, NAME, &[("result", "error")]);
        assert_eq!(none, HistogramTotals::default());
    }

    #[test]
    fn totals_read_label_less_series_with_a_timestamp_and_escaped_labels() {
        let plain = HistogramTotals::read(SCRAPE, "plain", &[]);
        assert_eq!((plain.sum, plain.count), (3.0, 6.0));
        let escaped = HistogramTotals::read(SCRAPE, "escaped", &[("path", "a\"b,c\\")]);
        assert_eq!((escaped.sum, escaped.count), (4.0, 8.0));
    }

    #[test]
    fn since_is_the_difference_of_two_scrapes() {
        let before = HistogramTotals {
            sum: 1.0,
            count: 10.0,
        };
        let after = HistogramTotals {
            sum: 1.5,
            count: 30.0,
        };
        assert_eq!(
            after.since(before),
            HistogramTotals {
                sum: 0.5,
                count: 20.0
            }
        );
    }
}

mod stats_tests {
    use std::time::Duration;

    use super::stats::*;

    #[test]
    fn summary_of_an_odd_count_takes_the_middle_value_and_keeps_run_order() {
        let s = Summary::of(&[858.0, 740.0, 801.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (740.0, 801.0, 858.0));
        assert_eq!(s.runs, [858.0, 740.0, 801.0]);
        assert_eq!(s.cell(0), "740 / 801 / 858");
    }

    #[test]
    fn summary_of_an_even_count_averages_the_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
    }

    #[test]
    fn summary_of_one_run_prints_the_value_alone_and_of_none_is_none() {
        assert_eq!(Summary::of(&[2.26]).unwrap().cell(1), "2.3");
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn percentile_takes_the_nearest_rank() {
        let sorted: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
    }
}

//! Event correlation, as client-go's event recorder does it
//! (`k8s.io/client-go/tools/record/events_cache.go`): a repeated Event bumps `count` and
//! `lastTimestamp` on the Event first written instead of becoming another object, and a burst of
//! similar Events (same object, source, type and reason; different messages) becomes one
//! `(combined from similar events): …` Event.
//!
//! Pure: recorders hold one [`EventCorrelator`] per process, hand it each new Event with the
//! current time and write what it decides ([`Decision`]). Times come in as arguments, so tests
//! inject them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

use crate::{
    core_v1::{Event, EventSource, ObjectReference},
    meta::{ObjectMeta, TypeMeta},
};

/// How many Events (and groups of similar Events) a correlator remembers, least recently seen
/// forgotten first (client-go's `maxLruCacheEntries`).
pub const MAX_CACHE_ENTRIES: usize = 4096;
/// How many different messages of similar Events within [`AGGREGATE_WINDOW`] are recorded as
/// themselves; from this many on they are combined (client-go's `defaultAggregateMaxEvents`).
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// How long after the last similar Event a group of similar Events stays open
/// (client-go's `defaultAggregateIntervalInSeconds`).
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// What a combined Event's message starts with (client-go's
/// `EventAggregatorByReasonMessageFunc`).
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";

/// Who records an Event: `source.component` and `reportingComponent` (`kubelet`, a
/// controller's name), `source.host` (the node, for the kubelet; empty for controllers) and
/// `reportingInstance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reporter<'a> {
    pub component: &'a str,
    pub host: &'a str,
    pub instance: &'a str,
}

/// A new Event (count 1, first and last seen `now`) about `involved`, as client-go's
/// `makeEvent` builds it; hand it to [`EventCorrelator::correlate`].
pub fn new_event(
    reporter: Reporter<'_>,
    involved: ObjectReference,
    (type_, reason): (&str, &str),
    message: String,
    now: SystemTime,
) -> Event {
    let stamp = chrono::DateTime::<chrono::Utc>::from(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Event {
        type_meta: TypeMeta::new("v1", "Event"),
        metadata: ObjectMeta {
            name: event_name(&involved.name, now),
            // An Event about a cluster-scoped object (a PersistentVolume, a Node) lives in
            // `default`, as client-go's `makeEvent` puts it.
            namespace: if involved.namespace.is_empty() {
                "default".to_owned()
            } else {
                involved.namespace.clone()
            },
            ..ObjectMeta::default()
        },
        involved_object: involved,
        reason: reason.to_owned(),
        message,
        source: EventSource {
            component: reporter.component.to_owned(),
            host: reporter.host.to_owned(),
        },
        first_timestamp: Some(stamp.clone()),
        last_timestamp: Some(stamp),
        count: 1,
        type_: type_.to_owned(),
        reporting_component: reporter.component.to_owned(),
        reporting_instance: reporter.instance.to_owned(),
        ..Event::default()
    }
}

/// A Kubernetes-like name for a new Event about `object`: `<object>.<nanoseconds since the
/// epoch, in hex>`, as client-go's `makeEvent` names them.
pub fn event_name(object: &str, now: SystemTime) -> String {
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{object}.{nanos:x}")
}

/// What to write for one recorded Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The first of its kind: create this Event (POST).
    Create(Event),
    /// A repeat of the Event named `metadata.name`: merge-PATCH it with [`Decision::patch`]
    /// (`count`, `lastTimestamp`, `message`). Should the patch find it gone (404), create this
    /// Event instead: it carries the name, `firstTimestamp` and count so far, as client-go does.
    Bump(Event),
}

impl Decision {
    /// The Event to create, or the one a bump makes of the stored Event.
    pub fn event(&self) -> &Event {
        match self {
            Self::Create(event) | Self::Bump(event) => event,
        }
    }

    /// The merge patch of a [`Decision::Bump`]; `None` for a [`Decision::Create`].
    pub fn patch(&self) -> Option<Value> {
        match self {
            Self::Create(_) => None,
            Self::Bump(event) => Some(json!({
                "count": event.count,
                "lastTimestamp": event.last_timestamp,
                "message": event.message,
            })),
        }
    }
}

/// Remembers recent Events to aggregate and count repeats (client-go's `EventCorrelator`, less
/// its spam filter: no Event is dropped).
#[derive(Debug)]
pub struct EventCorrelator {
    /// Groups of similar Events, by [`aggregate_key`].
    similar: Lru<Similar>,
    /// The Event each key was last written as, by [`event_key`] (or [`aggregate_key`] for
    /// combined Events).
    written: Lru<Written>,
}

/// Similar Events seen lately (client-go's `aggregateRecord`).
#[derive(Debug)]
struct Similar {
    /// Their distinct messages, at most [`AGGREGATE_MAX_EVENTS`] − 1 kept.
    messages: BTreeSet<String>,
    /// When the last of them was recorded.
    last: SystemTime,
}

/// An Event as last written (client-go's `eventLog`).
#[derive(Debug)]
struct Written {
    name: String,
    count: i32,
    first_timestamp: Option<String>,
}

impl Default for EventCorrelator {
    fn default() -> Self {
        Self::with_capacity(MAX_CACHE_ENTRIES)
    }
}

impl EventCorrelator {
    /// A correlator remembering at most `capacity` Events and as many groups of similar ones.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            similar: Lru::new(capacity),
            written: Lru::new(capacity),
        }
    }

    /// Decides how to record `event`, a new Event (its own name, `count: 1`, first and last
    /// timestamps the time it happened), recorded at `now`.
    pub fn correlate(&mut self, event: Event, now: SystemTime) -> Decision {
        let (event, key) = self.aggregate(event, now);
        self.observe(event, key)
    }

    /// Combines `event` with similar ones once [`AGGREGATE_MAX_EVENTS`] different messages came
    /// within [`AGGREGATE_WINDOW`] of each other; returns the Event to record and the key it is
    /// counted under (client-go's `EventAggregate`).
    fn aggregate(&mut self, mut event: Event, now: SystemTime) -> (Event, String) {
        let key = aggregate_key(&event);
        let fresh = || Similar {
            messages: BTreeSet::new(),
            last: now,
        };
        let mut similar = self.similar.remove(&key).unwrap_or_else(fresh);
        // A clock gone back counts as no time passed.
        if now.duration_since(similar.last).unwrap_or_default() > AGGREGATE_WINDOW {
            similar = fresh();
        }
        similar.messages.insert(event.message.clone());
        similar.last = now;
        let combine = similar.messages.len() >= AGGREGATE_MAX_EVENTS;
        if combine {
            // Keep the set from growing: it only has to stay at the threshold.
            similar.messages.pop_first();
        }
        self.similar.insert(key.clone(), similar);
        if !combine {
            let key = event_key(&event);
            return (event, key);
        }
        event.message = format!("{COMBINED_PREFIX}{}", event.message);
        (event, key)
    }

    /// Counts `event` under `key`: a bump of the Event written for it before, or a new one
    /// (client-go's `eventObserve`).
    fn observe(&mut self, mut event: Event, key: String) -> Decision {
        let previous = self.written.remove(&key);
        let decision = match previous {
            Some(previous) => {
                event.metadata.name = previous.name;
                event.first_timestamp = previous.first_timestamp;
                event.count = previous.count.saturating_add(1);
                Decision::Bump(event)
            }
            None => Decision::Create(event),
        };
        let event = decision.event();
        self.written.insert(
            key,
            Written {
                name: event.metadata.name.clone(),
                count: event.count,
                first_timestamp: event.first_timestamp.clone(),
            },
        );
        decision
    }
}

/// What makes two Events the same Event (client-go's `getEventKey`).
pub fn event_key(event: &Event) -> String {
    let o = &event.involved_object;
    join(&[
        "event",
        &event.source.component,
        &event.source.host,
        &o.kind,
        &o.namespace,
        &o.name,
        &o.field_path,
        &o.uid,
        &o.api_version,
        &event.type_,
        &event.reason,
        &event.message,
    ])
}

/// What makes two Events similar: all of [`event_key`] but the message and the field path, and
/// the reporting component and instance (client-go's `EventAggregatorByReasonFunc`).
pub fn aggregate_key(event: &Event) -> String {
    let o = &event.involved_object;
    join(&[
        "aggregate",
        &event.source.component,
        &event.source.host,
        &o.kind,
        &o.namespace,
        &o.name,
        &o.uid,
        &o.api_version,
        &event.type_,
        &event.reason,
        &event.reporting_component,
        &event.reporting_instance,
    ])
}

/// Joins key parts with NUL, which no name or message contains, so that parts cannot run
/// together (client-go joins with nothing).
fn join(parts: &[&str]) -> String {
    parts.join("\0")
}

/// A map of at most `capacity` entries that forgets the least recently used first.
#[derive(Debug)]
struct Lru<V> {
    capacity: usize,
    /// Incremented on every use; an entry's tick orders it in `by_use`.
    tick: u64,
    entries: HashMap<String, (u64, V)>,
    by_use: BTreeMap<u64, String>,
}

impl<V> Lru<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let (tick, value) = self.entries.remove(key)?;
        self.by_use.remove(&tick);
        Some(value)
    }

    fn insert(&mut self, key: String, value: V) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.tick += 1;
        self.by_use.insert(self.tick, key.clone());
        self.entries.insert(key, (self.tick, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core_v1::{EventSource, ObjectReference};

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    /// A new Event as a recorder makes it, at `at(seconds)`.
    fn event(reason: &str, message: &str, seconds: u64) -> Event {
        let now = at(seconds);
        let stamp = format!("t+{seconds}");
        Event {
            metadata: crate::ObjectMeta {
                name: event_name("web-1", now),
                namespace: "default".into(),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: "Pod".into(),
                namespace: "default".into(),
                name: "web-1".into(),
                uid: "uid-1".into(),
                api_version: "v1".into(),
                field_path: "spec.containers{web}".into(),
                ..Default::default()
            },
            reason: reason.into(),
            message: message.into(),
            source: EventSource {
                component: "kubelet".into(),
                host: "node-1".into(),
            },
            first_timestamp: Some(stamp.clone()),
            last_timestamp: Some(stamp),
            count: 1,
            type_: "Warning".into(),
            reporting_component: "kubelet".into(),
            reporting_instance: "node-1".into(),
            ..Default::default()
        }
    }

    fn record(c: &mut EventCorrelator, reason: &str, message: &str, seconds: u64) -> Decision {
        c.correlate(event(reason, message, seconds), at(seconds))
    }

    #[test]
    fn names_are_the_object_and_the_time_in_hex_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(0x17a2_b3c4_d5e6_f708);
        assert_eq!(event_name("web-1", t), "web-1.17a2b3c4d5e6f708");
    }

    #[test]
    fn a_first_event_is_created_as_it_came() {
        let mut c = EventCorrelator::default();
        let new = event("BackOff", "Back-off restarting failed container", 0);
        let decision = c.correlate(new.clone(), at(0));
        assert_eq!(decision, Decision::Create(new));
        assert_eq!(decision.patch(), None);
    }

    #[test]
    fn a_repeated_event_bumps_the_first_ones_count_and_last_timestamp() {
        let mut c = EventCorrelator::default();
        let first = record(&mut c, "BackOff", "Back-off", 0);
        let first_name = first.event().metadata.name.clone();
        for (n, seconds) in [(2, 10), (3, 300), (4, 310)] {
            let decision = record(&mut c, "BackOff", "Back-off", seconds);
            let Decision::Bump(bumped) = &decision else {
                panic!("repeat {n} was not a bump: {decision:?}");
            };
            assert_eq!(bumped.metadata.name, first_name);
            assert_eq!(bumped.count, n);
            assert_eq!(bumped.first_timestamp.as_deref(), Some("t+0"));
            let last = format!("t+{seconds}");
            assert_eq!(
                decision.patch(),
                Some(json!({ "count": n, "lastTimestamp": last, "message": "Back-off" }))
            );
        }
    }

    #[test]
    fn repeats_are_counted_however_far_apart_as_client_go_does() {
        // client-go's event log has no time limit, only a size: an object failing every hour
        // shows one Event `x24 over 23h`.
        let mut c = EventCorrelator::default();
        record(&mut c, "BackOff", "Back-off", 0);
        let later = record(&mut c, "BackOff", "Back-off", 3 * 3600);
        assert!(
            matches!(&later, Decision::Bump(e) if e.count == 2),
            "{later:?}"
        );
    }

    #[test]
    fn events_differing_in_any_part_of_the_key_are_separate() {
        let mut c = EventCorrelator::default();
        let base = event("Failed", "Error: ErrImagePull", 0);
        assert!(matches!(
            c.correlate(base.clone(), at(0)),
            Decision::Create(_)
        ));
        let variants: [fn(&mut Event); 8] = [
            |e| e.type_ = "Normal".into(),
            |e| e.reason = "Pulled".into(),
            |e| e.message = "Error: ImagePullBackOff".into(),
            |e| e.source.host = "node-2".into(),
            |e| e.source.component = "scheduler".into(),
            |e| e.involved_object.field_path = "spec.containers{sidecar}".into(),
            |e| e.involved_object.uid = "uid-2".into(),
            |e| e.involved_object.name = "web-2".into(),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut other = base.clone();
            change(&mut other);
            let decision = c.correlate(other, at(i as u64 + 1));
            assert!(
                matches!(decision, Decision::Create(_)),
                "variant {i}: {decision:?}"
            );
        }
    }

    #[test]
    fn the_tenth_different_message_within_ten_minutes_starts_a_combined_event() {
        let mut c = EventCorrelator::default();
        for i in 0..9 {
            let decision = record(&mut c, "SuccessfulCreate", &format!("Created pod: p{i}"), i);
            assert!(
                matches!(decision, Decision::Create(ref e) if e.message == format!("Created pod: p{i}"))
            );
        }
        let tenth = record(&mut c, "SuccessfulCreate", "Created pod: p9", 9);
        let Decision::Create(combined) = &tenth else {
            panic!("{tenth:?}");
        };
        assert_eq!(
            combined.message,
            "(combined from similar events): Created pod: p9"
        );
        assert_eq!(combined.count, 1);
        // Further similar ones bump the combined Event, its message the latest one.
        let eleventh = record(&mut c, "SuccessfulCreate", "Created pod: p10", 20);
        let Decision::Bump(bumped) = &eleventh else {
            panic!("{eleventh:?}");
        };
        assert_eq!(bumped.metadata.name, combined.metadata.name);
        assert_eq!(bumped.count, 2);
        assert_eq!(bumped.first_timestamp.as_deref(), Some("t+9"));
        assert_eq!(
            eleventh.patch().unwrap()["message"],
            "(combined from similar events): Created pod: p10"
        );
        // Another reason is not similar.
        let other = record(&mut c, "SuccessfulDelete", "Deleted pod: p0", 21);
        assert!(matches!(other, Decision::Create(ref e) if e.message == "Deleted pod: p0"));
    }

    #[test]
    fn similar_events_further_apart_than_ten_minutes_are_not_combined() {
        let mut c = EventCorrelator::default();
        // Ten different messages, each 601 s after the one before: the group starts afresh
        // every time.
        for i in 0..10 {
            let decision = record(&mut c, "Unhealthy", &format!("probe failed: {i}"), i * 601);
            assert!(matches!(decision, Decision::Create(ref e) if !e.message.starts_with('(')));
        }
        // The window slides with the last similar Event: 9 more, each within 10 minutes of the
        // one before, make the tenth distinct message of the group that started at the last.
        let start = 9 * 601;
        for i in 1..9 {
            let decision = record(&mut c, "Unhealthy", &format!("late {i}"), start + i * 500);
            assert!(matches!(decision, Decision::Create(ref e) if !e.message.starts_with('(')));
        }
        let tenth = record(&mut c, "Unhealthy", "late 9", start + 9 * 500);
        assert!(
            matches!(tenth, Decision::Create(ref e) if e.message.starts_with(COMBINED_PREFIX)),
            "{tenth:?}"
        );
    }

    #[test]
    fn repeats_of_one_message_are_counted_not_combined() {
        let mut c = EventCorrelator::default();
        for i in 0..30 {
            let decision = record(&mut c, "BackOff", "Back-off", i);
            assert_eq!(decision.event().count, i32::try_from(i).unwrap() + 1);
            assert_eq!(decision.event().message, "Back-off");
        }
    }

    #[test]
    fn the_least_recently_seen_event_is_forgotten_first() {
        let mut c = EventCorrelator::with_capacity(2);
        record(&mut c, "A", "a", 0);
        record(&mut c, "B", "b", 1);
        // A is used again, so B is the least recent when C comes.
        assert!(matches!(record(&mut c, "A", "a", 2), Decision::Bump(_)));
        record(&mut c, "C", "c", 3);
        assert!(matches!(record(&mut c, "A", "a", 4), Decision::Bump(_)));
        assert!(matches!(record(&mut c, "B", "b", 5), Decision::Create(_)));
    }
}

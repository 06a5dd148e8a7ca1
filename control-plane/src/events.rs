//! The control plane's Event recorder, shared by the controllers and the scheduler: one
//! [`EventCorrelator`] per process (in [`Api::events`]), so that a repeated Event bumps the
//! `count` of the one already stored, as Kubernetes' components do through client-go.
//!
//! Writes go through the API's own create and merge-patch paths, so watchers see them.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use apiary_api::{
    ObjectMeta, TypeMeta,
    core_v1::{Event, EventSource, ObjectReference},
    events::{Decision, EventCorrelator, event_name},
};

use crate::apiserver::{Api, error::ApiError, objects, path::Target};

/// The process's Event correlator; [`record`] is the way to use it.
#[derive(Debug, Default)]
pub struct Recorder {
    correlator: Mutex<EventCorrelator>,
}

impl Recorder {
    /// What to write for `event`, recorded at `now`.
    fn correlate(&self, event: Event, now: SystemTime) -> Decision {
        // A panic elsewhere while holding the lock leaves the cache consistent enough: every
        // update is a single insert.
        let mut correlator = self
            .correlator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        correlator.correlate(event, now)
    }
}

/// Who reports an Event: its `source.component` and `reportingComponent`, and its
/// `reportingInstance` (empty for none).
#[derive(Clone, Copy, Debug)]
pub struct Reporter<'a> {
    pub component: &'a str,
    pub instance: &'a str,
}

/// Records a core/v1 Event about `involved`: a new one, or a repeat counted on the Event it
/// repeats. Best effort: a failure is logged, never returned; an Event is never worth failing
/// a reconcile for.
pub async fn record(
    api: &Arc<Api>,
    reporter: Reporter<'_>,
    involved: ObjectReference,
    (type_, reason): (&str, &str),
    message: &str,
) {
    let now = SystemTime::now();
    let stamp = chrono::DateTime::<chrono::Utc>::from(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = Event {
        type_meta: TypeMeta::new("v1", "Event"),
        metadata: ObjectMeta {
            name: event_name(&involved.name, now),
            namespace: involved.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: involved,
        reason: reason.to_owned(),
        message: message.to_owned(),
        source: EventSource {
            component: reporter.component.to_owned(),
            host: String::new(),
        },
        first_timestamp: Some(stamp.clone()),
        last_timestamp: Some(stamp),
        count: 1,
        type_: type_.to_owned(),
        reporting_component: reporter.component.to_owned(),
        reporting_instance: reporter.instance.to_owned(),
        ..Event::default()
    };
    let decision = api.events.correlate(event, now);
    if let Err(e) = write(api, &decision).await {
        tracing::debug!(reason, error = %e.message, "recording an event failed");
    }
}

/// Writes what the correlator decided: a merge patch of the stored Event for a repeat, a create
/// for a new one or for a repeat whose Event is gone (as client-go's `recordEvent`).
pub async fn write(api: &Arc<Api>, decision: &Decision) -> Result<(), ApiError> {
    let event = decision.event();
    let resource = api
        .resources
        .get("", "v1", "events")
        .expect("events are served");
    let namespace = Some(event.metadata.namespace.clone());
    if let Some(patch) = decision.patch() {
        let name = event.metadata.name.as_str();
        let target = Target {
            resource,
            namespace: namespace.clone(),
            name: Some(name.to_owned()),
            subresource: None,
        };
        let body = serde_json::to_vec(&patch).expect("a JSON value encodes");
        match objects::patch(api, &target, name, "application/merge-patch+json", &body).await {
            // Deleted meanwhile: created again below, with the count so far.
            Err(e) if e.reason == "NotFound" => {}
            other => return other.map(drop),
        }
    }
    let target = Target {
        resource,
        namespace,
        name: None,
        subresource: None,
    };
    let body = serde_json::to_value(event).expect("an Event encodes");
    objects::create(api, &target, body).await.map(drop)
}

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
    core_v1::{Event, ObjectReference},
    events::{self, Decision, EventCorrelator},
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
    let event = events::new_event(
        events::Reporter {
            component: reporter.component,
            host: "",
            instance: reporter.instance,
        },
        involved,
        (type_, reason),
        message.to_owned(),
        now,
    );
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

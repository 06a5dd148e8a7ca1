//! `GET|POST /attach/{namespace}/{pod}/{container}?stdin=…&stdout=…&stderr=…&tty=…`: the
//! remotecommand WebSocket of `kubectl attach` (and `kubectl run -i`), framed as exec's. The
//! session carries the running container's output from now on and, for a container with
//! `stdin: true`, what the client types; it ends when the container exits (with a success on
//! the error channel, as the kubelet sends) or when the client detaches.

use std::sync::Arc;

use axum::{
    extract::{
        Path, RawQuery, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    response::{IntoResponse as _, Response},
};

use super::{PodStreams, exec};

pub(super) async fn handle(
    State(backend): State<Arc<dyn PodStreams>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A `command` means nothing to attach: it is not read.
    let request =
        match exec::options(query.as_deref().unwrap_or_default()).and_then(exec::checked_streams) {
            Ok(request) => request,
            Err(e) => return e.into_response(),
        };
    exec::serve(upgrade, "attach", Vec::new(), async move {
        backend.attach(&namespace, &pod, &container, request).await
    })
    .await
}

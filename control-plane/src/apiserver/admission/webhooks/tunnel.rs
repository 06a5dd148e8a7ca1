//! A byte stream to a port of a pod, through the pod's node agent: the kubelet's port-forward
//! channel protocol (`v4.channel.k8s.io`) over a WebSocket to `/portForward/{ns}/{pod}`.
//!
//! kube-apiserver dials a webhook Service's endpoints directly, which needs the control plane
//! to route to pod addresses. Apiary's API server may run where no pod route exists (the lab's
//! control plane has none), but it always reaches every node's agent, for exec and logs; so a
//! webhook in a pod is reached the way `kubectl port-forward` reaches one.

use axum::{
    body::Body,
    http::{self, StatusCode, header},
};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::tungstenite::{Message, protocol::Role};

use crate::apiserver::{Api, streams::AgentEndpoint};

/// The channel protocol of the kubelet's WebSocket port-forward.
const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// Bytes buffered each way between the caller and the WebSocket.
const BUFFER: usize = 64 * 1024;

/// Opens a connection to `port` of pod `namespace/pod` on the node whose agent is `agent`.
/// The stream ends when the pod closes the connection; a refusal on the error channel (nothing
/// listening) ends it too, and is what a read sees as its error.
pub async fn dial(
    api: &Api,
    agent: &AgentEndpoint,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<DuplexStream, String> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = http::Request::get(agent.uri(
        &format!("/portForward/{namespace}/{pod}"),
        &format!("port={port}"),
    ))
    .header(header::CONNECTION, "Upgrade")
    .header(header::UPGRADE, "websocket")
    .header(header::SEC_WEBSOCKET_VERSION, "13")
    .header(header::SEC_WEBSOCKET_KEY, key)
    .header(header::SEC_WEBSOCKET_PROTOCOL, CHANNEL_PROTOCOL)
    .body(Body::empty())
    .map_err(|e| e.to_string())?;
    let mut response = agent.send(api, request).await.map_err(|e| e.0)?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!(
            "port-forward to pod {namespace}/{pod}: the node agent answered {}",
            response.status()
        ));
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| format!("port-forward to pod {namespace}/{pod}: {e}"))?;
    let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    let (caller, ours) = tokio::io::duplex(BUFFER);
    tokio::spawn(pump(socket, ours));
    Ok(caller)
}

/// Copies between the caller's end of the duplex and the WebSocket's data channel (0) until
/// either side ends. The first message of each channel is the port, not data.
async fn pump<S>(socket: tokio_tungstenite::WebSocketStream<S>, ours: DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let (mut from_caller, mut to_caller) = tokio::io::split(ours);
    let upstream = async {
        let mut buffer = vec![0u8; BUFFER];
        loop {
            match from_caller.read(&mut buffer[1..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buffer[0] = 0;
                    let frame = Message::binary(buffer[..=n].to_vec());
                    if sink.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = async {
        let mut prefixed = [false; 2];
        while let Some(Ok(message)) = stream.next().await {
            let Message::Binary(data) = message else {
                if message.is_close() {
                    return;
                }
                continue;
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let channel = usize::from(channel);
            if channel > 1 {
                continue;
            }
            if !prefixed[channel] {
                // The port, two little-endian bytes, opens each channel.
                prefixed[channel] = true;
                let rest = payload.get(2..).unwrap_or_default();
                if rest.is_empty() {
                    continue;
                }
                if channel == 0 && to_caller.write_all(rest).await.is_err() {
                    return;
                }
                continue;
            }
            if channel == 1 {
                tracing::debug!(error = %String::from_utf8_lossy(payload), "port-forward to a webhook failed");
                return;
            }
            if to_caller.write_all(payload).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

//! `GET|POST /portForward/{namespace}/{pod}`: `kubectl port-forward`, as the kubelet serves it.
//!
//! kubectl's connection speaks SPDY/3.1 ([`spdy`], [`session`]) in one of two carriers:
//! - a WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io`, whose binary messages carry
//!   the SPDY byte stream: what kubectl 1.31+ asks for first (`PortForwardWebsockets`);
//! - an `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io`: kubectl's
//!   fallback, and what older clients send.
//!
//! Other WebSocket clients get the kubelet's channel protocol ([`channels`]): `v4.channel.k8s.io`,
//! `v4.base64.channel.k8s.io`, or no subprotocol at all, with the ports in the query.
//!
//! Connections to the pod are opened by the backend's [`PortDialer`], inside the pod's network
//! namespace; [`connect_loopback`] words a refusal as containerd does, which kubectl shows.

pub mod channels;
mod session;
pub mod spdy;

use std::{io, net::Ipv4Addr, sync::Arc, time::Duration};

use apiary_api::remotecommand;
use axum::{
    extract::{
        FromRequestParts as _, Path, Request, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::{PodStreams, PortDialer, StreamError, exec::Framing};

/// The port-forward protocol inside SPDY (`X-Stream-Protocol-Version`).
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels SPDY (client-go's `WebsocketsSPDYTunnelingPortForwardV1`).
pub const WEBSOCKET_SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The `Upgrade` token of a plain SPDY connection.
const SPDY_UPGRADE: &str = "SPDY/3.1";
/// How long a connection to a pod's loopback may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The size of the buffer between the WebSocket and the SPDY session, each way.
const TUNNEL_BUFFER: usize = 128 * 1024;

pub(super) async fn handle(
    State(backend): State<Arc<dyn PodStreams>>,
    Path((namespace, pod)): Path<(String, String)>,
    mut request: Request,
) -> Response {
    let dialer = match backend.port_forward(&namespace, &pod).await {
        Ok(dialer) => dialer,
        Err(e) => return e.into_response(),
    };
    if is_websocket(request.headers()) {
        let query = request.uri().query().unwrap_or_default().to_owned();
        let asked_for_subprotocols = request
            .headers()
            .contains_key(header::SEC_WEBSOCKET_PROTOCOL);
        let (mut parts, _) = request.into_parts();
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade.protocols([
                WEBSOCKET_SPDY_TUNNEL,
                remotecommand::V4,
                remotecommand::V4_BASE64,
            ]),
            Err(rejection) => return rejection.into_response(),
        };
        let protocol = upgrade
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned);
        let framing = match protocol.as_deref() {
            Some(WEBSOCKET_SPDY_TUNNEL) => {
                return upgrade.on_upgrade(move |socket| tunnel(socket, dialer));
            }
            Some(other) => Framing::of(other),
            // The kubelet serves binary channels to a client that names no subprotocol.
            None if !asked_for_subprotocols => Framing::V4,
            None => {
                return StreamError::BadRequest(format!(
                    "none of the requested WebSocket subprotocols is supported: use {WEBSOCKET_SPDY_TUNNEL}, {} or {}",
                    remotecommand::V4,
                    remotecommand::V4_BASE64
                ))
                .into_response();
            }
        };
        let ports = match channels::ports(&query) {
            Ok(ports) => ports,
            Err(e) => return e.into_response(),
        };
        return upgrade.on_upgrade(move |socket| over_channels(socket, framing, ports, dialer));
    }
    if let Err(refusal) = spdy_handshake(request.headers()) {
        return refusal;
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                session::serve(reader, writer, dialer, session::IDLE_TIMEOUT).await;
            }
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    headers.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(PROTOCOL_V1),
    );
    response
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The checks of client-go's `httpstream.Handshake` and SPDY upgrader, with their answers.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response, built once on a refused request"
)]
fn spdy_handshake(headers: &HeaderMap) -> Result<(), Response> {
    let tokens = |name: header::HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let upgrading = tokens(header::CONNECTION)
        .iter()
        .any(|v| v.eq_ignore_ascii_case("upgrade"))
        && tokens(header::UPGRADE)
            .iter()
            .any(|v| v.eq_ignore_ascii_case(SPDY_UPGRADE));
    if !upgrading {
        return Err((
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        )
            .into_response());
    }
    let offered = tokens(header::HeaderName::from_static("x-stream-protocol-version"));
    // A client naming no protocol is an old one, served the only protocol there is.
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL_V1) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{PROTOCOL_V1}\"]"
            ),
        )
            .into_response());
    }
    Ok(())
}

/// Serves a session on the SPDY byte stream that the WebSocket's binary messages carry.
async fn tunnel(socket: WebSocket, dialer: Arc<dyn PortDialer>) {
    let (session_end, tunnel_end) = tokio::io::duplex(TUNNEL_BUFFER);
    let (reader, writer) = tokio::io::split(session_end);
    tokio::join!(
        session::serve(reader, writer, dialer, session::IDLE_TIMEOUT),
        carry(socket, tunnel_end),
    );
}

/// Copies the WebSocket's binary messages into `stream` and what comes out of it into binary
/// messages; message boundaries mean nothing (client-go's `TunnelingConnection`).
async fn carry(socket: WebSocket, stream: DuplexStream) {
    let (mut sink, mut messages) = socket.split();
    let (mut from_session, mut to_session) = tokio::io::split(stream);
    let inbound = async move {
        while let Some(Ok(message)) = messages.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                // Pings are answered by the socket itself; text is not part of the tunnel.
                _ => continue,
            };
            if to_session.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_session.shutdown().await;
    };
    let outbound = async move {
        let mut buffer = BytesMut::new();
        loop {
            buffer.reserve(32 * 1024);
            match from_session.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let data = buffer.split().freeze();
                    if sink.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
            }
        }
        // A close without a code reads as an error to client-go.
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    };
    tokio::join!(inbound, outbound);
}

/// Serves the channel protocol on `socket`, framed as `framing` says.
async fn over_channels(
    socket: WebSocket,
    framing: Framing,
    ports: Vec<u16>,
    dialer: Arc<dyn PortDialer>,
) {
    let (mut sink, messages) = socket.split();
    let incoming = messages
        .take_while(|message| {
            std::future::ready(matches!(message, Ok(m) if !matches!(m, Message::Close(_))))
        })
        .filter_map(move |message| {
            std::future::ready(
                message
                    .ok()
                    .and_then(|m| framing.decode(m))
                    .map(|(channel, payload)| (channel, Bytes::from(payload))),
            )
        });
    let (outgoing, mut to_client) = tokio::sync::mpsc::channel::<(u8, Bytes)>(64);
    let writer = async move {
        while let Some((channel, data)) = to_client.recv().await {
            if sink.send(framing.encode(channel, &data)).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    };
    tokio::join!(
        channels::serve(ports, dialer, Box::pin(incoming), outgoing),
        writer
    );
}

/// Connects to `port` on the loopback of the calling thread's network namespace: IPv4 first,
/// then IPv6, as containerd does. The error is containerd's message, with Go's wording of the
/// two failures; `sandbox` names the pod in it.
pub fn connect_loopback(port: u16, sandbox: &str) -> Result<std::net::TcpStream, String> {
    let v4 = (Ipv4Addr::LOCALHOST, port).into();
    let v6 = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let ipv4 = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(socket) => return Ok(socket),
        Err(e) => e,
    };
    let ipv6 = match std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT) {
        Ok(socket) => return Ok(socket),
        Err(e) => e,
    };
    Err(format!(
        "failed to connect to localhost:{port} inside namespace \"{sandbox}\", IPv4: dial tcp4 {v4}: connect: {} IPv6 dial tcp6 {v6}: connect: {} ",
        go_error_text(&ipv4),
        go_error_text(&ipv6),
    ))
}

/// An OS error as Go prints an errno: `connection refused`.
fn go_error_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = nix::errno::Errno::from_raw(code).desc();
            let mut chars = text.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_lowercase().chain(chars).collect()
            })
        }
        None if e.kind() == io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests;

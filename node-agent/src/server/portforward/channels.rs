//! Port-forwarding over a WebSocket of channels, the kubelet's protocol for WebSocket clients
//! (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or no subprotocol): the ports are in the
//! query (`?port=8080&port=9090`, or comma-separated), port *i* has data channel `2i` and error
//! channel `2i+1`, and the first message on each channel is the port as two little-endian bytes.
//! One connection per port; the WebSocket closes once every connection has ended.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
    task::JoinSet,
};

use crate::server::{PortDialer, StreamError};

/// The most one message to the client carries.
const CHUNK: usize = 32 * 1024;

/// The ports of the query's `port` parameters, worded as the kubelet's refusals.
pub fn ports(query: &str) -> Result<Vec<u16>, StreamError> {
    let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "port")
        .map(|(_, value)| value.into_owned())
        .collect();
    if values.is_empty() {
        return Err(StreamError::BadRequest(
            "query parameter \"port\" is required".into(),
        ));
    }
    let mut ports = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err(StreamError::BadRequest(
                "query parameter \"port\" cannot be empty".into(),
            ));
        }
        for part in value.split(',') {
            let port: u16 = part.parse().map_err(|e| {
                StreamError::BadRequest(format!("unable to parse {value:?} as a port: {e}"))
            })?;
            if port < 1 {
                return Err(StreamError::BadRequest(format!(
                    "port {value:?} must be > 0"
                )));
            }
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Serves `ports` over channel messages: `incoming` from the client, `outgoing` to it. Returns
/// once every connection has ended or the client has gone.
pub async fn serve(
    ports: Vec<u16>,
    dialer: Arc<dyn PortDialer>,
    mut incoming: impl Stream<Item = (u8, Bytes)> + Unpin,
    outgoing: mpsc::Sender<(u8, Bytes)>,
) {
    let mut inbound = Vec::new();
    let mut forwards = JoinSet::new();
    for (index, port) in ports.into_iter().enumerate() {
        let data = u8::try_from(2 * index).expect("few ports");
        for channel in [data, data + 1] {
            let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
            if outgoing.send((channel, prefix)).await.is_err() {
                return;
            }
        }
        let (to_pod, from_client) = mpsc::channel(16);
        inbound.push(to_pod);
        forwards.spawn(forward(
            Arc::clone(&dialer),
            port,
            data,
            from_client,
            outgoing.clone(),
        ));
    }
    loop {
        tokio::select! {
            message = incoming.next() => {
                let Some((channel, payload)) = message else { break };
                // Only data channels carry anything from the client.
                if channel % 2 == 0
                    && let Some(to_pod) = inbound.get(usize::from(channel / 2))
                    && !payload.is_empty()
                {
                    let _ = to_pod.send(payload).await;
                }
            }
            finished = forwards.join_next() => {
                if finished.is_none() {
                    break;
                }
            }
        }
    }
    forwards.shutdown().await;
}

/// One port's connection: dial, then copy both ways until either side ends; a failure goes on
/// the error channel in the kubelet's words.
async fn forward(
    dialer: Arc<dyn PortDialer>,
    port: u16,
    data: u8,
    from_client: mpsc::Receiver<Bytes>,
    outgoing: mpsc::Sender<(u8, Bytes)>,
) {
    match dialer.dial(port).await {
        Ok(socket) => splice(socket, data, from_client, &outgoing).await,
        Err(reason) => {
            let message = format!(
                "error forwarding port {port} to pod {}, uid : {reason}",
                dialer.pod_id()
            );
            let _ = outgoing.send((data + 1, Bytes::from(message))).await;
        }
    }
}

async fn splice(
    socket: TcpStream,
    data: u8,
    mut from_client: mpsc::Receiver<Bytes>,
    outgoing: &mpsc::Sender<(u8, Bytes)>,
) {
    let (mut from_pod, mut to_pod) = socket.into_split();
    let upstream = async {
        while let Some(chunk) = from_client.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buffer = BytesMut::with_capacity(CHUNK);
        loop {
            buffer.reserve(CHUNK);
            match from_pod.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if outgoing
                        .send((data, buffer.split().freeze()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

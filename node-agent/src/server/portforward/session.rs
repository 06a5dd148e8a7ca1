//! One port-forwarding SPDY connection, served as the kubelet serves it. The client opens two
//! streams per forwarded connection, `streamtype` `error` and `data`, with the same `port` and
//! `requestid`; once both are there the pod's port is dialled and bytes are spliced between the
//! data stream and the socket. When the connection ends both streams end (kubectl waits for
//! the error stream's end); a failure is written on the error stream first. Either way only
//! that pair ends: the session goes on serving the others and the next.

use std::{collections::HashMap, ops::ControlFlow, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use super::spdy::{self, Decoder, Encoder, Frame, Headers};
use crate::server::PortDialer;

/// How long a session may go without a frame from the client before it is closed: the
/// kubelet's default `--streaming-connection-idle-timeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// The most one data frame to the client carries (what Go's `io.Copy` writes at once).
const CHUNK: usize = 32 * 1024;

/// Serves port-forwarding on one SPDY connection until the client closes it, goes away,
/// breaks the protocol or stays silent for `idle_timeout`.
pub async fn serve<R, W>(
    mut reader: R,
    writer: W,
    dialer: Arc<dyn PortDialer>,
    idle_timeout: Duration,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (frames, outgoing) = mpsc::channel(64);
    let writer = tokio::spawn(write_frames(writer, outgoing));
    let mut session = Session {
        dialer,
        frames,
        inbound: HashMap::new(),
        pending: HashMap::new(),
        forwards: JoinSet::new(),
        last_stream_id: 0,
    };
    let mut decoder = Decoder::default();
    let mut buffer = BytesMut::with_capacity(2 * CHUNK);
    'session: loop {
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    if session.handle(frame).await.is_break() {
                        break 'session;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward client broke the SPDY protocol");
                    let _ = session
                        .frames
                        .send(Frame::GoAway {
                            last_good_stream_id: session.last_stream_id,
                            status: spdy::PROTOCOL_ERROR,
                        })
                        .await;
                    break 'session;
                }
            }
        }
        buffer.reserve(CHUNK);
        match tokio::time::timeout(idle_timeout, reader.read_buf(&mut buffer)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "port-forward connection failed");
                break;
            }
            Err(_) => {
                tracing::debug!("closing an idle port-forward connection");
                break;
            }
        }
    }
    // The client is gone: so are its connections to the pod.
    session.forwards.shutdown().await;
    drop(session);
    let _ = writer.await;
}

/// What the client sends on a data stream, for the task splicing it.
#[derive(Debug)]
struct Inbound {
    data: mpsc::Sender<Bytes>,
    reset: oneshot::Sender<()>,
}

/// The streams of one forwarded connection, as they arrive.
#[derive(Debug, Default)]
struct Pair {
    error: Option<u32>,
    /// The data stream, its port header, and what the client sends on it.
    data: Option<(u32, String, DataReceiver)>,
}

#[derive(Debug)]
struct DataReceiver {
    data: mpsc::Receiver<Bytes>,
    reset: oneshot::Receiver<()>,
}

struct Session {
    dialer: Arc<dyn PortDialer>,
    frames: mpsc::Sender<Frame>,
    /// Data streams whose client half is open.
    inbound: HashMap<u32, Inbound>,
    /// Pairs still missing a stream, by request id.
    pending: HashMap<String, Pair>,
    forwards: JoinSet<()>,
    last_stream_id: u32,
}

impl Session {
    async fn handle(&mut self, frame: Frame) -> ControlFlow<()> {
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
            } => {
                self.last_stream_id = stream_id;
                // spdystream's client waits for the reply before it uses a stream.
                self.send(Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Vec::new(),
                })
                .await?;
                self.open(stream_id, fin, &headers).await?;
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if let Some(inbound) = self.inbound.get(&stream_id)
                    && !data.is_empty()
                    && inbound.data.send(data).await.is_err()
                {
                    self.inbound.remove(&stream_id);
                }
                if fin {
                    // Dropping the sender ends what the pod's socket is sent.
                    self.inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(inbound) = self.inbound.remove(&stream_id) {
                    let _ = inbound.reset.send(());
                }
                self.pending.retain(|_, pair| {
                    pair.error != Some(stream_id)
                        && pair.data.as_ref().is_none_or(|(id, ..)| *id != stream_id)
                });
            }
            Frame::Ping { id } => self.send(Frame::Ping { id }).await?,
            Frame::GoAway { .. } => return ControlFlow::Break(()),
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored { .. } => {}
        }
        // Finished forwards leave the set as they go.
        while self.forwards.try_join_next().is_some() {}
        ControlFlow::Continue(())
    }

    async fn send(&self, frame: Frame) -> ControlFlow<()> {
        match self.frames.send(frame).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }

    /// A new stream: one half of a pair, and the pair's forward once both halves are there.
    async fn open(&mut self, stream_id: u32, fin: bool, headers: &Headers) -> ControlFlow<()> {
        let kind = spdy::header(headers, "streamtype").unwrap_or_default();
        // Clients before `requestID` sent the error stream, then the data stream, in turn.
        let request_id = match (spdy::header(headers, "requestid"), kind) {
            (Some(id), _) => id.to_owned(),
            (None, "data") => stream_id.saturating_sub(2).to_string(),
            (None, _) => stream_id.to_string(),
        };
        match kind {
            "error" => self.pending.entry(request_id.clone()).or_default().error = Some(stream_id),
            "data" => {
                let (data_tx, data_rx) = mpsc::channel(16);
                let (reset_tx, reset_rx) = oneshot::channel();
                if !fin {
                    self.inbound.insert(
                        stream_id,
                        Inbound {
                            data: data_tx,
                            reset: reset_tx,
                        },
                    );
                }
                let port = spdy::header(headers, "port").unwrap_or_default().to_owned();
                self.pending.entry(request_id.clone()).or_default().data = Some((
                    stream_id,
                    port,
                    DataReceiver {
                        data: data_rx,
                        reset: reset_rx,
                    },
                ));
            }
            other => {
                tracing::debug!(stream_id, kind = other, "unknown port-forward stream type");
                return self
                    .send(Frame::RstStream {
                        stream_id,
                        status: spdy::REFUSED_STREAM,
                    })
                    .await;
            }
        }
        if let Some(pair) = self.pending.get(&request_id)
            && pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some((data, port, receiver)),
            }) = self.pending.remove(&request_id)
        {
            self.forwards.spawn(forward(
                Arc::clone(&self.dialer),
                port,
                (data, error),
                receiver,
                self.frames.clone(),
            ));
        }
        ControlFlow::Continue(())
    }
}

/// One forwarded connection: dial, splice, and end both streams.
async fn forward(
    dialer: Arc<dyn PortDialer>,
    port: String,
    (data, error): (u32, u32),
    receiver: DataReceiver,
    frames: mpsc::Sender<Frame>,
) {
    let connected = match port.parse::<u16>() {
        Ok(number) if number > 0 => dialer.dial(number).await,
        _ => Err(format!("invalid port {port:?}")),
    };
    match connected {
        Ok(socket) => splice(socket, data, receiver, &frames).await,
        Err(reason) => {
            // The kubelet's words; the uid is empty for pods run through the CRI.
            let message = format!(
                "error forwarding port {port} to pod {}, uid : {reason}",
                dialer.pod_id()
            );
            tracing::debug!(%message, "port-forward");
            let _ = frames
                .send(Frame::Data {
                    stream_id: error,
                    fin: false,
                    data: Bytes::from(message),
                })
                .await;
        }
    }
    for stream_id in [data, error] {
        let _ = frames
            .send(Frame::Data {
                stream_id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }
}

/// Copies both ways until the pod's side ends, the socket fails or the client resets the
/// stream. The client's end of sending half-closes the socket: the answer still comes back.
async fn splice(
    socket: TcpStream,
    stream_id: u32,
    receiver: DataReceiver,
    frames: &mpsc::Sender<Frame>,
) {
    let DataReceiver {
        data: mut inbound,
        reset,
    } = receiver;
    let (mut from_pod, mut to_pod) = socket.into_split();
    let upstream = async {
        while let Some(chunk) = inbound.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let mut buffer = BytesMut::with_capacity(CHUNK);
        loop {
            buffer.reserve(CHUNK);
            match from_pod.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let data = buffer.split().freeze();
                    if frames
                        .send(Frame::Data {
                            stream_id,
                            fin: false,
                            data,
                        })
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
        // A dropped sender is the client's end of sending, not a reset.
        Ok(()) = reset => {}
    }
}

/// Encodes frames onto the connection; whatever is queued goes out in one write.
async fn write_frames<W: AsyncWrite + Unpin>(mut writer: W, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = Encoder::default();
    let mut wire = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        encoder.encode(&frame, &mut wire);
        while wire.len() < 4 * CHUNK
            && let Ok(frame) = frames.try_recv()
        {
            encoder.encode(&frame, &mut wire);
        }
        if writer.write_all(&wire).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        wire.clear();
    }
    let _ = writer.shutdown().await;
}

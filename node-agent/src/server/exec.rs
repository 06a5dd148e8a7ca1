//! `GET|POST /exec/{namespace}/{pod}/{container}`: a WebSocket speaking remotecommand v5, v4 or
//! v4.base64.
//!
//! One task reads the socket (stdin, resize, v5's close), one pump per output stream writes
//! `[channel, data…]` messages, and once the process has exited and its output is drained the
//! exit status goes out on the error channel before the close frame.

use std::sync::Arc;

use apiary_api::remotecommand::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};
use axum::{
    extract::{
        Path, RawQuery, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
            rejection::WebSocketUpgradeRejection,
        },
    },
    response::{IntoResponse as _, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use futures::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{ExecRequest, ExecSession, PodStreams, StreamError, parse_bool};

pub(super) async fn handle(
    State(backend): State<Arc<dyn PodStreams>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request = match parse(query.as_deref().unwrap_or_default()) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let command = request.command.clone();
    serve(upgrade, "exec", command, async move {
        backend.exec(&namespace, &pod, &container, request).await
    })
    .await
}

/// Negotiates the remotecommand WebSocket, starts the session and runs it: what exec and
/// attach share. `command` words the exit status (none for attach, whose end is a success).
pub(super) async fn serve(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    what: &str,
    command: Vec<String>,
    start: impl Future<Output = Result<ExecSession, StreamError>>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return StreamError::BadRequest(format!(
            "{what} needs a WebSocket upgrade with subprotocol {}",
            remotecommand::PROTOCOLS.join(" or ")
        ))
        .into_response();
    };
    let upgrade = upgrade.protocols(remotecommand::PROTOCOLS.iter().copied());
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned)
    else {
        return StreamError::BadRequest(format!(
            "none of the requested WebSocket subprotocols is supported: use {}",
            remotecommand::PROTOCOLS.join(" or ")
        ))
        .into_response();
    };
    let framing = Framing::of(&protocol);
    match start.await {
        Ok(session) => upgrade.on_upgrade(move |socket| async move {
            run(socket, session, &command, framing).await;
        }),
        // On the error channel, as the kubelet does: a refused upgrade would send kubectl to
        // its SPDY fallback, whose error would hide this one.
        Err(e) => upgrade.on_upgrade(move |socket| fail(socket, framing, e)),
    }
}

/// The query: `command` repeats, one argument each.
pub(super) fn parse(query: &str) -> Result<ExecRequest, StreamError> {
    let request = options(query)?;
    if request.command.is_empty() {
        return Err(StreamError::BadRequest(
            "command: Required value: you must specify at least one command for the container"
                .into(),
        ));
    }
    checked_streams(request)
}

/// The query's streams, terminal and command, unchecked.
pub(super) fn options(query: &str) -> Result<ExecRequest, StreamError> {
    let mut request = ExecRequest::default();
    let (mut stdin, mut stdout, mut stderr, mut tty) = (None, None, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "command" => request.command.push(value.into_owned()),
            "stdin" | "input" => stdin = Some(value.into_owned()),
            "stdout" | "output" => stdout = Some(value.into_owned()),
            "stderr" | "error" => stderr = Some(value.into_owned()),
            "tty" => tty = Some(value.into_owned()),
            _ => {}
        }
    }
    request.stdin = parse_bool("stdin", stdin.as_deref())?;
    request.stdout = parse_bool("stdout", stdout.as_deref())?;
    request.stderr = parse_bool("stderr", stderr.as_deref())?;
    request.tty = parse_bool("tty", tty.as_deref())?;
    Ok(request)
}

/// At least one stream; a terminal has one output stream.
pub(super) fn checked_streams(mut request: ExecRequest) -> Result<ExecRequest, StreamError> {
    if !(request.stdin || request.stdout || request.stderr) {
        return Err(StreamError::BadRequest(
            "you must specify at least one of stdin, stdout, stderr".into(),
        ));
    }
    if request.tty {
        request.stderr = false;
    }
    Ok(request)
}

/// Sends `error`'s `Status` on the error channel and closes.
async fn fail(mut socket: WebSocket, framing: Framing, error: StreamError) {
    let status = serde_json::to_vec(&error.status()).unwrap_or_default();
    if socket.send(framing.encode(ERROR, &status)).await.is_ok() {
        let _ = socket.send(Message::Close(Some(normal_close()))).await;
    }
}

/// A close without a code reads as an error to client-go: say it is a normal closure.
fn normal_close() -> CloseFrame {
    CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    }
}

/// How channels and data are put in messages, by subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// `[channel, data…]` binary messages, with v5's close signal.
    V5,
    /// `[channel, data…]` binary messages.
    V4,
    /// Text messages: the channel as an ASCII digit, then base64.
    Base64,
}

impl Framing {
    pub(super) fn of(protocol: &str) -> Self {
        match protocol {
            remotecommand::V5 => Self::V5,
            remotecommand::V4_BASE64 => Self::Base64,
            _ => Self::V4,
        }
    }

    pub(super) fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Self::V5 | Self::V4 => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::Binary(frame.into())
            }
            Self::Base64 => Message::Text(
                format!("{}{}", char::from(b'0' + channel), BASE64.encode(data)).into(),
            ),
        }
    }

    /// The channel and data of a client message; `None` for what carries neither.
    pub(super) fn decode(self, message: Message) -> Option<(u8, Vec<u8>)> {
        match (self, message) {
            (Self::V5 | Self::V4, Message::Binary(data)) => {
                let (&channel, payload) = data.split_first()?;
                Some((channel, payload.to_vec()))
            }
            (Self::Base64, Message::Text(text)) => {
                let (digit, payload) = text.as_str().split_at_checked(1)?;
                let channel = digit.bytes().next()?.checked_sub(b'0')?;
                Some((channel, BASE64.decode(payload).ok()?))
            }
            _ => None,
        }
    }
}

async fn run(socket: WebSocket, session: ExecSession, command: &[String], framing: Framing) {
    let ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
    });
    let pumps: Vec<_> = [(STDOUT, stdout), (STDERR, stderr)]
        .into_iter()
        .filter_map(|(channel, stream)| {
            Some(tokio::spawn(pump(
                channel,
                stream?,
                out_tx.clone(),
                framing,
            )))
        })
        .collect();
    // Ends when the client goes away: then the process must not outlive it.
    let mut reader = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(Ok(message)) = incoming.next().await {
            if let Message::Close(_) = message {
                break;
            }
            let Some((channel, payload)) = framing.decode(message) else {
                continue;
            };
            let payload = payload.as_slice();
            match channel {
                STDIN => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(payload).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    if let (Some(tx), Ok(size)) = (
                        &resize,
                        serde_json::from_slice::<remotecommand::TerminalSize>(payload),
                    ) {
                        let _ = tx.send((size.width, size.height)).await;
                    }
                }
                CLOSE if framing == Framing::V5 && payload.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    });
    let status = tokio::select! {
        code = exit => match code {
            Ok(code) => remotecommand::exit_status(command, code),
            Err(e) => remotecommand::failure_status(&format!("waiting for the command: {e}")),
        },
        _ = &mut reader => {
            tracing::debug!("exec client went away before the command exited");
            return;
        }
    };
    // All output before the status: kubectl stops reading at the close.
    for pump in pumps {
        let _ = pump.await;
    }
    let status = serde_json::to_vec(&status).unwrap_or_default();
    let _ = out_tx.send(framing.encode(ERROR, &status)).await;
    let _ = out_tx.send(Message::Close(Some(normal_close()))).await;
    drop(out_tx);
    let _ = writer.await;
    // The closing handshake: the client's close comes once it has read everything. Closing the
    // connection before it (with its frames unread) resets it, and a reset can discard the
    // status still on its way to the client.
    if tokio::time::timeout(CLOSE_HANDSHAKE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// How long the client may take to answer the close.
const CLOSE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

async fn pump(
    channel: u8,
    mut from: std::pin::Pin<Box<dyn AsyncRead + Send>>,
    to: mpsc::Sender<Message>,
    framing: Framing,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(framing.encode(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_frames_carry_the_channel_as_a_digit() {
        let message = Framing::Base64.encode(STDOUT, b"hi\n");
        assert_eq!(message, Message::Text("1aGkK".into()));
        assert_eq!(
            Framing::Base64.decode(Message::Text("0aGkK".into())),
            Some((STDIN, b"hi\n".to_vec()))
        );
        assert_eq!(
            Framing::V5.decode(Message::Binary(vec![4, b'{'].into())),
            Some((RESIZE, b"{".to_vec()))
        );
        assert_eq!(Framing::V4.decode(Message::Text("0aGkK".into())), None);
    }

    #[test]
    fn commands_repeat_and_streams_are_checked() {
        let request =
            parse("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=true").unwrap();
        assert_eq!(request.command, ["sh", "-c", "echo hi"]);
        assert!(request.stdout && request.stderr && !request.stdin && !request.tty);
        let tty = parse("command=sh&stdin=true&stdout=true&stderr=true&tty=true").unwrap();
        assert!(!tty.stderr, "a terminal merges stderr into stdout");
        assert!(
            parse("stdout=true")
                .unwrap_err()
                .to_string()
                .starts_with("command: Required value")
        );
        assert!(parse("command=ls").is_err(), "no stream asked for");
    }
}

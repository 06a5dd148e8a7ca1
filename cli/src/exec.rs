//! `apiary exec`: runs a command in a container over the API server's `pods/{name}/exec`
//! WebSocket (remotecommand v5, else v4), with a raw local terminal for `-t`. The remote exit
//! code becomes ours.

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use apiary_api::remotecommand::{
    self, CLOSE, ERROR, Outcome as Ended, RESIZE, STDERR, STDIN, STDOUT,
};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::Message;

use crate::{Outcome, Session, logs::pod_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (`NAME` or `pod/NAME`).
    pub pod: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// The container (default: the pod's only one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Run the command on a terminal (stdin must be one).
    #[arg(short = 't', long)]
    pub tty: bool,
}

pub async fn run(session: &Session, args: &Args) -> anyhow::Result<Outcome> {
    let pod = pod_name(&args.pod)?;
    let tty = args.tty && std::io::stdin().is_terminal();
    if args.tty && !tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let path = format!("/api/v1/namespaces/{}/pods/{pod}/exec", session.namespace);
    let mut query: Vec<(&str, &str)> = args
        .command
        .iter()
        .map(|c| ("command", c.as_str()))
        .collect();
    if let Some(container) = &args.container {
        query.push(("container", container));
    }
    query.push(("stdout", "true"));
    query.push(("stderr", if tty { "false" } else { "true" }));
    if args.stdin {
        query.push(("stdin", "true"));
    }
    if tty {
        query.push(("tty", "true"));
    }
    let (socket, protocol) = session
        .client
        .websocket(&path, &query, &[remotecommand::V5, remotecommand::V4])
        .await?;
    let v5 = protocol == remotecommand::V5;
    let (mut sink, mut incoming) = socket.split();
    let _raw = if tty {
        Some(RawTerminal::enter()?)
    } else {
        None
    };

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
    });
    if tty {
        tokio::spawn(send_sizes(tx.clone()));
    }
    if args.stdin {
        tokio::spawn(send_stdin(tx.clone(), v5));
    }
    drop(tx);

    let mut status = Vec::new();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(message) = incoming.next().await {
        let data = match message.context("reading from the exec stream")? {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            STDOUT => {
                stdout.write_all(payload)?;
                stdout.flush()?;
            }
            STDERR => {
                stderr.write_all(payload)?;
                stderr.flush()?;
            }
            ERROR => status.extend_from_slice(payload),
            _ => {}
        }
    }
    writer.abort();
    drop(_raw);
    if status.is_empty() {
        bail!("the exec stream closed before the command's exit status arrived");
    }
    match remotecommand::outcome(&status) {
        Ended::Exited(0) => Ok(Outcome::Success),
        Ended::Exited(code) => Ok(Outcome::Exit(u8::try_from(code).unwrap_or(1))),
        Ended::Failed(message) => bail!("{message}"),
    }
}

/// Stdin as channel-0 frames; at its end, v5's close of channel 0 (v4 has no way to say it).
async fn send_stdin(tx: tokio::sync::mpsc::Sender<Vec<u8>>, v5: bool) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    buf[0] = STDIN;
    loop {
        match stdin.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(buf[..=n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
    if v5 {
        let _ = tx.send(vec![CLOSE, STDIN]).await;
    }
}

/// The terminal's size now and after every SIGWINCH, on the resize channel.
async fn send_sizes(tx: tokio::sync::mpsc::Sender<Vec<u8>>) {
    let mut changes =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    loop {
        if let Some(size) = terminal_size() {
            let mut frame = vec![RESIZE];
            frame.extend_from_slice(&serde_json::to_vec(&size).unwrap_or_default());
            if tx.send(frame).await.is_err() {
                return;
            }
        }
        let Some(changes) = changes.as_mut() else {
            return;
        };
        if changes.recv().await.is_none() {
            return;
        }
    }
}

fn terminal_size() -> Option<remotecommand::TerminalSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    let ok = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(remotecommand::TerminalSize {
        width: size.ws_col,
        height: size.ws_row,
    })
}

/// The local terminal in raw mode (keys go to the remote one as typed), restored on drop.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(Self(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

impl std::fmt::Debug for RawTerminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawTerminal")
    }
}

//! Logs, exec and port-forwarding of this node's pods, for the streaming server (`kubectl logs`,
//! `kubectl exec`, `kubectl port-forward`): names are resolved through the pod registry the
//! workers keep, logs read from the files the shims write, exec run through the runtime, and
//! forwarded connections opened inside the pod's network namespace.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use apiary_runtime::{
    ContainerStatus, Runtime,
    logs::{LogOptions, LogStream},
};
use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};

use super::context::Context;
use crate::server::{
    ExecRequest, ExecSession, LogRequest, PodStreams, PortDialer, StreamError, portforward,
};

/// [`PodStreams`] over the agent's pods.
#[derive(Debug)]
pub struct AgentStreams(pub Arc<Context>);

impl AgentStreams {
    /// The runtime id and attempt of `container`'s latest attempt.
    fn locate(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<(String, String, u32), StreamError> {
        let entry =
            self.0
                .registry
                .get(namespace, pod)
                .ok_or_else(|| StreamError::PodNotFound {
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                })?;
        if !entry.names.iter().any(|n| n == container) {
            return Err(StreamError::ContainerNotFound {
                pod: pod.to_owned(),
                container: container.to_owned(),
            });
        }
        let (id, attempt) =
            entry
                .containers
                .get(container)
                .cloned()
                .ok_or_else(|| StreamError::NotRunning {
                    pod: pod.to_owned(),
                    container: container.to_owned(),
                    reason: "ContainerCreating".to_owned(),
                })?;
        Ok((entry.uid, id, attempt))
    }
}

#[async_trait::async_trait]
impl PodStreams for AgentStreams {
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: LogRequest,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, StreamError> {
        let (uid, id, attempt) = self.locate(namespace, pod, container)?;
        let attempt = if request.previous {
            attempt.checked_sub(1).ok_or_else(|| {
                StreamError::BadRequest(format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                ))
            })?
        } else {
            attempt
        };
        let path = self.0.log_path(&uid, container, attempt);
        let since = request.since(chrono::Utc::now());
        let follow = request.follow && !request.previous;
        let options = LogOptions {
            follow,
            tail_lines: request.tail_lines.and_then(|n| usize::try_from(n).ok()),
            since,
            timestamps: request.timestamps,
            limit_bytes: request.limit_bytes.and_then(|n| u64::try_from(n).ok()),
            stream: None,
        };
        let lines = apiary_runtime::logs::read(&path, options).map(|chunk| chunk.map(Bytes::from));
        if !follow {
            return Ok(lines.boxed());
        }
        // A followed log ends shortly after its container does (what it wrote last is read
        // within the grace of the delay).
        let exited = exited_and_drained(self.0.runtime.clone(), id);
        Ok(lines.take_until(Box::pin(exited)).boxed())
    }

    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let (_, id, _) = self.locate(namespace, pod, container)?;
        let mut process = self
            .0
            .runtime
            .exec(
                &id,
                &apiary_runtime::ExecRequest {
                    args: request.command.clone(),
                    env: Vec::new(),
                    tty: request.tty,
                },
            )
            .await
            .map_err(|e| match e {
                apiary_runtime::Error::NotRunning { .. } => StreamError::NotRunning {
                    pod: pod.to_owned(),
                    container: container.to_owned(),
                    reason: "not running".to_owned(),
                },
                other => StreamError::Internal(other.into()),
            })?;
        let mut session_stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>> = None;
        let mut session_stdout: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>> = None;
        let mut session_stderr: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>> = None;
        if let Some(pty) = process.pty.take() {
            let (read, write) = tokio::io::split(pty);
            session_stdout = Some(Box::pin(read));
            session_stdin = Some(Box::pin(write));
        } else {
            if let Some(stdin) = process.stdin.take() {
                session_stdin = Some(Box::pin(stdin));
            }
            if let Some(stdout) = process.stdout.take() {
                session_stdout = Some(Box::pin(stdout));
            }
            if let Some(stderr) = process.stderr.take() {
                session_stderr = Some(Box::pin(stderr));
            }
        }
        if !request.stdin {
            session_stdin = None;
        }
        let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<(u16, u16)>(8);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let tty = request.tty;
        tokio::spawn(async move {
            let mut exit_tx = exit_tx;
            let code = loop {
                tokio::select! {
                    Some((width, height)) = resize_rx.recv(), if tty => {
                        let _ = process.resize(height, width);
                    }
                    code = process.wait() => break Some(code),
                    () = exit_tx.closed() => break None,
                }
            };
            // Dropping the process kills it when the client went away first.
            drop(process);
            if let Some(code) = code {
                let _ = exit_tx.send(code.map_err(io::Error::other));
            }
        });
        Ok(ExecSession {
            stdin: session_stdin,
            stdout: session_stdout,
            stderr: session_stderr,
            resize: tty.then_some(resize_tx),
            exit: Box::pin(async move {
                exit_rx
                    .await
                    .map_err(|_| io::Error::other("the exec ended without a status"))?
            }),
        })
    }

    async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let (uid, id, attempt) = self.locate(namespace, pod, container)?;
        let runtime = self.0.runtime.clone();
        let not_running = || StreamError::NotRunning {
            pod: pod.to_owned(),
            container: container.to_owned(),
            reason: "not running".to_owned(),
        };
        match runtime.state(&id) {
            Ok(Some(state)) if matches!(state.status, ContainerStatus::Running) => {}
            _ => return Err(not_running()),
        }
        // The output from now on, out of the log the shim writes as the container does.
        let path = self.0.log_path(&uid, container, attempt);
        let output = |stream| {
            let records = apiary_runtime::logs::read(
                &path,
                LogOptions {
                    follow: true,
                    tail_lines: Some(0),
                    stream,
                    ..LogOptions::default()
                },
            );
            readable(records.take_until(Box::pin(exited_and_drained(runtime.clone(), id.clone()))))
        };
        // A terminal session has one output: both of the container's, as a terminal would.
        let stdout = request.stdout.then(|| match request.tty {
            true => output(None),
            false => output(Some(LogStream::Stdout)),
        });
        let stderr = request.stderr.then(|| output(Some(LogStream::Stderr)));
        let stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>> = if request.stdin {
            match runtime.attach_stdin(&id).await {
                Ok(stdin) => stdin.map(|s| Box::pin(s) as _),
                Err(apiary_runtime::Error::NotRunning { .. }) => return Err(not_running()),
                Err(other) => return Err(StreamError::Internal(other.into())),
            }
        } else {
            None
        };
        Ok(ExecSession {
            stdin,
            stdout,
            stderr,
            resize: None,
            exit: Box::pin(async move {
                exited(&runtime, &id).await;
                Ok(0)
            }),
        })
    }

    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Arc<dyn PortDialer>, StreamError> {
        let entry =
            self.0
                .registry
                .get(namespace, pod)
                .ok_or_else(|| StreamError::PodNotFound {
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                })?;
        Ok(Arc::new(PodPorts {
            netns: self.0.sandbox_dir(&entry.uid).join("net"),
            sandbox: entry.uid,
        }))
    }
}

/// Resolves once container `id` no longer runs.
async fn exited(runtime: &Runtime, id: &str) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match runtime.state(id) {
            Ok(Some(state)) if matches!(state.status, ContainerStatus::Running) => {}
            _ => return,
        }
    }
}

/// Resolves a little after container `id` exited: a log follower has read its last words.
async fn exited_and_drained(runtime: Runtime, id: String) {
    exited(&runtime, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// `chunks` as a reader, pumped by a task of its own that ends when the reader goes.
fn readable(
    chunks: impl futures::Stream<Item = io::Result<Vec<u8>>> + Send + 'static,
) -> std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> {
    let (reader, mut writer) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(Ok(chunk)) = chunks.next().await {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    Box::pin(reader)
}

/// A pod's ports, reached from inside its network namespace.
#[derive(Debug)]
struct PodPorts {
    /// The pod's sandbox (its uid).
    sandbox: String,
    /// The sandbox's bind-mounted network namespace.
    netns: PathBuf,
}

#[async_trait::async_trait]
impl PortDialer for PodPorts {
    fn pod_id(&self) -> &str {
        &self.sandbox
    }

    async fn dial(&self, port: u16) -> Result<tokio::net::TcpStream, String> {
        let (netns, sandbox) = (self.netns.clone(), self.sandbox.clone());
        let in_namespace = move || {
            // A socket stays in the namespace it was made in; only a short-lived thread of
            // `run_in` enters it, never a runtime worker.
            crate::netns::run_in(&netns, || portforward::connect_loopback(port, &sandbox))
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
                .and_then(|connected| connected)
                .map_err(|reason| {
                    format!(
                        "failed to execute portforward in network namespace \"{}\": {reason}",
                        netns.display()
                    )
                })
        };
        let socket = tokio::task::spawn_blocking(in_namespace)
            .await
            .map_err(|e| e.to_string())??;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        tokio::net::TcpStream::from_std(socket).map_err(|e| e.to_string())
    }
}

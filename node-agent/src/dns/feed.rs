//! The feed between the agent and the cluster DNS process ([`super::standalone`]), over a unix
//! socket in the agent's run dir. The process greets every connection with its [`Hello`]; then
//! the agent sends [`ToDns::Records`] and the process sends [`ToAgent::Answered`], each side on
//! its own, until the connection drops.
//!
//! The agent sends whole snapshots of [`ClusterRecords`], not changes: a snapshot makes the
//! process right after any agent restart or lost connection without replay or sequence numbers,
//! and the agent sends one at most every [`SNAPSHOT_INTERVAL`] (a burst of changes, such as a
//! relist, is one snapshot). A cluster's few thousand names are a few hundred kB of JSON.
//!
//! Frames are a big-endian `u32` length, then that many bytes of JSON.

use std::{collections::BTreeMap, io, os::unix::fs::MetadataExt as _, time::Duration};

use apiary_runtime::state::ProcessId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{records::ClusterRecords, standalone::DnsConfig};

/// The longest the agent waits between a change to its records and sending them.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// How often the process reports its answer counts (when they changed).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Frames larger than this are refused: a length this large is a broken peer, not records.
const MAX_FRAME: u32 = 256 << 20;

/// Errors of the feed. All end the connection; the agent connects again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the socket failed, or the peer closed it.
    #[error("DNS feed I/O: {0}")]
    Io(#[from] io::Error),
    /// A frame was not a message of this protocol (another build, or a broken peer).
    #[error("DNS feed: undecodable message: {0}")]
    Decode(#[source] serde_json::Error),
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("DNS feed: a frame of {len} bytes (at most {MAX_FRAME})")]
    TooLarge { len: u32 },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the DNS process says first on every connection, for the agent to decide whether it can
/// keep this process or must replace it. Its shape is the one part of the protocol every build
/// must read: a Hello that does not decode is treated as another build's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The process's [`build_id`].
    pub build: String,
    /// The process itself, so that the agent can tell a new one from the one it talked to.
    pub process: ProcessId,
    /// What it serves with.
    pub config: DnsConfig,
}

/// Agent → DNS process. Generic over how the records are held, so that the agent serializes
/// them borrowed, under its read lock.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToDns<R = ClusterRecords> {
    /// Every record, replacing those the process had.
    Records(R),
}

/// DNS process → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    /// The process's answer counts since it started, by response code.
    Answered(BTreeMap<String, u64>),
}

/// Which build of the node agent this process runs: the identity of its executable file
/// (device, inode, size, modification time). A new build is a new file, so an agent replaces a
/// DNS process started from an older binary; agents started from the same binary keep it.
pub fn build_id() -> String {
    build_id_of(std::path::Path::new("/proc/self/exe"))
}

/// The [`build_id`] of a process started from `executable`.
pub fn build_id_of(executable: &std::path::Path) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match std::fs::metadata(executable) {
        Ok(m) => format!(
            "{version}/{:x}:{:x}/{:x}/{}.{:09}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => version.to_owned(),
    }
}

/// Encodes `message` as one frame.
pub fn encode(message: &impl Serialize) -> Vec<u8> {
    let mut frame = vec![0; 4];
    serde_json::to_writer(&mut frame, message).expect("feed messages always serialize");
    let len = u32::try_from(frame.len() - 4).expect("a frame fits in u32");
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// Writes one frame made by [`encode`].
pub async fn write_frame(writer: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> Result<()> {
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Encodes and writes `message`.
pub async fn send(writer: &mut (impl AsyncWrite + Unpin), message: &impl Serialize) -> Result<()> {
    write_frame(writer, &encode(message)).await
}

/// Reads the next message; `None` when the peer closed the connection between messages.
pub async fn receive<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>> {
    let len = match reader.read_u32().await {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_FRAME {
        return Err(Error::TooLarge { len });
    }
    let mut buf = vec![0; len as usize];
    reader.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(Error::Decode)
}

#[cfg(test)]
mod tests;

//! A container's state dir: the files the shim writes and the agent reads, so that the state
//! survives agent restarts (re-adoption reads it back).
//!
//! ```text
//! <state_dir>/<id>/spec.json      ContainerSpec (written by Runtime::start)
//!                  shim.json      the shim's pid, written as soon as it detached
//!                  started.json   the container's init pid, once it runs
//!                  exit.json      how it ended (or why it did not start)
//!                  shim.log       the shim's own stderr
//!                  upper/ work/   overlayfs upper and work dirs
//!                  bundle/        OCI bundle: config.json, rootfs/ (the overlay mount)
//!                  youki/         libcontainer's state root
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What [`crate::Runtime`] reports about a container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// Host pid of the container's init; `None` while the shim is still starting it.
    pub pid: Option<i32>,
    pub status: ContainerStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub log_path: PathBuf,
}

/// Running or exited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ContainerStatus {
    Running,
    Exited(ExitInfo),
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, or 128 + signal when killed by a signal; 128 when it failed to start.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: DateTime<Utc>,
    /// Why it did not start (e.g. `exec: "foo": executable file not found in $PATH`).
    pub message: Option<String>,
}

/// A process identified by pid and start time, so that a recycled pid is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
}

impl ProcessId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: i32) -> Option<ProcessId> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        // `rest` starts at field 3 (state); start time is field 22.
        let start_time = rest.split(' ').nth(19)?.parse().ok()?;
        Some(ProcessId { pid, start_time })
    }

    /// The calling process.
    pub fn current() -> Option<ProcessId> {
        ProcessId::of(std::process::id() as i32)
    }

    /// Whether this very process still exists (and is not a zombie).
    pub fn alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|s| s == "Z" || s == "X");
        !zombie && ProcessId::of(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }
}

/// `shim.json`: written by the detached shim before it does anything else.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimRecord {
    pub shim: ProcessId,
}

/// `started.json`: the container runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartedRecord {
    pub init: ProcessId,
    pub started_at: DateTime<Utc>,
}

/// The paths of one container's state dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path, id: &str) -> Layout {
        Layout {
            dir: state_dir.join(id),
        }
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn shim(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn started(&self) -> PathBuf {
        self.dir.join("started.json")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
    pub fn youki_root(&self) -> PathBuf {
        self.dir.join("youki")
    }
}

/// Reads a JSON state file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::CorruptState {
                    path: path.display().to_string(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
    }
}

/// Writes a JSON state file atomically (temp file + rename): readers never see half a file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("state records serialize");
    let mut file =
        fs::File::create(&tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(Error::io(format!("renaming to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.alive());
        let recycled = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.alive());
    }

    #[test]
    fn json_round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert!(read_json::<ExitInfo>(&path).unwrap().is_none());
        let exit = ExitInfo {
            exit_code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: Utc::now(),
            message: None,
        };
        write_json(&path, &exit).unwrap();
        assert_eq!(read_json::<ExitInfo>(&path).unwrap(), Some(exit));
        fs::write(&path, b"{").unwrap();
        assert!(matches!(
            read_json::<ExitInfo>(&path),
            Err(Error::CorruptState { .. })
        ));
    }
}

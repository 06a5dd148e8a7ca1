//! A process the suite starts, kills (SIGKILL) and starts again with the same arguments.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;

#[derive(Debug)]
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with `args`, appending its output to `log`.
    pub fn start(
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            program: program.into(),
            args,
            log,
            child: None,
        };
        process.restart()?;
        Ok(process)
    }

    /// Starts it again (after [`Process::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

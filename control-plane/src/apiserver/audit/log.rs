//! The log backend (kube-apiserver's `--audit-log-path`): one JSON event per line, written by a
//! thread of its own so a slow disk holds requests back only once its queue is full (the
//! blocking mode Kubernetes defaults to: no event is dropped). The file rotates as kube-apiserver's
//! (lumberjack): past `max_size` bytes it is renamed `<name>-<UTC time>.<ext>` and a new one started;
//! backups past `max_backups` or older than `max_age` are removed.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, SystemTime},
};

/// Events waiting for the writer before requests wait for it.
const QUEUE: usize = 10_000;

/// Where and how the log is written.
#[derive(Clone, Debug)]
pub struct Options {
    /// The file; `-` is standard output.
    pub path: PathBuf,
    /// Rotate past this size; 0 is lumberjack's default, 100 MB.
    pub max_size_mb: u64,
    /// Old files kept; 0 keeps all (up to `max_age_days`).
    pub max_backups: usize,
    /// Days old files are kept; 0 keeps them whatever their age.
    pub max_age_days: u64,
}

/// A handle that sends lines to the writer thread.
#[derive(Clone, Debug)]
pub struct Log {
    lines: mpsc::SyncSender<Vec<u8>>,
}

impl Log {
    /// Opens (creating, 0600) the log and starts its writer.
    pub fn open(options: Options) -> io::Result<Self> {
        let mut sink = Sink::open(options)?;
        let (lines, queue) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".to_owned())
            .spawn(move || {
                while let Ok(line) = queue.recv() {
                    let mut batch = vec![line];
                    batch.extend(queue.try_iter());
                    if let Err(e) = sink.write(&batch) {
                        tracing::error!(error = %e, "writing the audit log");
                    }
                }
            })?;
        Ok(Self { lines })
    }

    /// Queues one event (a JSON line without its newline).
    pub fn write(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        // Fails only when the writer is gone, which logged why.
        let _ = self.lines.send(line);
    }
}

enum Output {
    Stdout,
    File {
        file: BufWriter<File>,
        size: u64,
        options: Options,
    },
}

struct Sink(Output);

impl Sink {
    fn open(options: Options) -> io::Result<Self> {
        if options.path.as_os_str() == "-" {
            return Ok(Self(Output::Stdout));
        }
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&options.path)?;
        let size = file.metadata()?.len();
        Ok(Self(Output::File {
            file: BufWriter::new(file),
            size,
            options,
        }))
    }

    fn write(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        match &mut self.0 {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                batch.iter().try_for_each(|line| out.write_all(line))?;
                out.flush()
            }
            Output::File {
                file,
                size,
                options,
            } => {
                let max = match options.max_size_mb {
                    0 => 100,
                    mb => mb,
                } * 1024
                    * 1024;
                for line in batch {
                    if *size > 0 && *size + line.len() as u64 > max {
                        file.flush()?;
                        rotate(options)?;
                        *file = BufWriter::new(open_append(&options.path)?);
                        *size = 0;
                    }
                    file.write_all(line)?;
                    *size += line.len() as u64;
                }
                file.flush()
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Renames the current file to a timestamped backup and prunes old backups.
fn rotate(options: &Options) -> io::Result<()> {
    let (stem, ext) = name_parts(&options.path);
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S%.3f");
    let backup = options.path.with_file_name(format!("{stem}-{stamp}{ext}"));
    fs::rename(&options.path, &backup)?;
    let dir = options
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!("{stem}-");
    let mut backups: Vec<(SystemTime, PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(&ext)
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    backups.sort_by_key(|b| std::cmp::Reverse(b.0));
    let now = SystemTime::now();
    let max_age = Duration::from_secs(options.max_age_days * 24 * 3600);
    for (i, (modified, path)) in backups.iter().enumerate() {
        let too_many = options.max_backups > 0 && i >= options.max_backups;
        let too_old =
            options.max_age_days > 0 && now.duration_since(*modified).unwrap_or_default() > max_age;
        if too_many || too_old {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// `audit` and `.log` of `audit.log`.
fn name_parts(path: &Path) -> (String, String) {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()));
    (stem.unwrap_or_default(), ext.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_are_appended_to_a_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.log");
        let mut sink = Sink::open(Options {
            path: path.clone(),
            max_size_mb: 0,
            max_backups: 0,
            max_age_days: 0,
        })
        .unwrap();
        sink.write(&[b"{\"a\":1}\n".to_vec(), b"{\"a\":2}\n".to_vec()])
            .unwrap();
        assert_eq!(lines(&path), ["{\"a\":1}", "{\"a\":2}"]);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_full_file_rotates_and_old_backups_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut sink = Sink::open(Options {
            path: path.clone(),
            max_size_mb: 1,
            max_backups: 2,
            max_age_days: 0,
        })
        .unwrap();
        // 600 KB lines: every second line rotates the file.
        let line = [vec![b'x'; 600 * 1024], b"\n".to_vec()].concat();
        for _ in 0..5 {
            sink.write(std::slice::from_ref(&line)).unwrap();
            // Backups are told apart by their millisecond timestamps.
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("audit") && n.ends_with(".log"))
        );
        assert_eq!(lines(&path).len(), 1);
    }

    #[test]
    fn backup_names_keep_the_extension() {
        assert_eq!(
            name_parts(Path::new("/x/audit.log")),
            ("audit".into(), ".log".into())
        );
        assert_eq!(
            name_parts(Path::new("/x/audit")),
            ("audit".into(), String::new())
        );
    }
}

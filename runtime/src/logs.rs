//! Container logs in the CRI format kubelet reads:
//! `2006-01-02T15:04:05.000000000Z stdout F line` (`P` marks a partial line, continued by the
//! next record). The shim writes them with [`LogWriter`]; the agent serves them with [`read`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;

/// Longest line kept whole; longer ones are split into `P` records (containerd uses 16 KiB too).
const MAX_LINE: usize = 16 * 1024;
/// How often a following reader looks for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Which output a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The path of the `n`th rotated file (`n` ≥ 1; 1 is the newest).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

/// Writes CRI records, rotating at `max_bytes` and keeping `max_files` files in all.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: File,
    size: u64,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            max_bytes,
            max_files: max_files.max(1),
            file,
            size,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Feeds output of `stream`: complete lines become `F` records, the rest waits for more.
    pub fn write(&mut self, stream: LogStream, mut data: &[u8]) -> io::Result<()> {
        let slot = stream as usize;
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[slot]);
            line.extend_from_slice(&data[..nl]);
            self.record(stream, 'F', &line)?;
            data = &data[nl + 1..];
        }
        self.pending[slot].extend_from_slice(data);
        while self.pending[slot].len() >= MAX_LINE {
            let rest = self.pending[slot].split_off(MAX_LINE);
            let chunk = std::mem::replace(&mut self.pending[slot], rest);
            self.record(stream, 'P', &chunk)?;
        }
        Ok(())
    }

    /// The stream ended: an unterminated last line is written as a partial record.
    pub fn finish(&mut self, stream: LogStream) -> io::Result<()> {
        let line = std::mem::take(&mut self.pending[stream as usize]);
        if !line.is_empty() {
            self.record(stream, 'P', &line)?;
        }
        Ok(())
    }

    fn record(&mut self, stream: LogStream, tag: char, content: &[u8]) -> io::Result<()> {
        let mut record =
            format!("{} {} {tag} ", timestamp(Utc::now()), stream.as_str()).into_bytes();
        record.extend_from_slice(content);
        record.push(b'\n');
        if self.size > 0 && self.size + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        // One write per record, unbuffered: a following reader sees whole records.
        self.file.write_all(&record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files == 1 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.max_files - 1).rev() {
                match fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, rotated_path(&self.path, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// What to read, as in `kubectl logs`.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Keep reading new records (across rotations) until the caller drops the stream.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
    /// Only the records of one output (`kubectl attach` keeps stdout and stderr apart).
    pub stream: Option<LogStream>,
}

/// One parsed CRI record.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    time: &'a str,
    stream: &'a [u8],
    partial: bool,
    content: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        partial: tag.first() == Some(&b'P'),
        content,
    })
}

/// Turns records into output bytes, applying `since`, `timestamps` and `limit_bytes`.
#[derive(Debug)]
struct Formatter {
    options: LogOptions,
    at_line_start: bool,
    written: u64,
}

impl Formatter {
    fn done(&self) -> bool {
        self.options.limit_bytes.is_some_and(|l| self.written >= l)
    }

    fn format(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(record) = parse(line) else { return };
        if let Some(wanted) = self.options.stream
            && record.stream != wanted.as_str().as_bytes()
        {
            return;
        }
        if let Some(since) = self.options.since {
            match DateTime::parse_from_rfc3339(record.time) {
                Ok(t) if t < since => return,
                _ => {}
            }
        }
        let start = out.len();
        if self.options.timestamps && self.at_line_start {
            out.extend_from_slice(record.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(record.content);
        if !record.partial {
            out.push(b'\n');
        }
        self.at_line_start = !record.partial;
        let mut added = (out.len() - start) as u64;
        if let Some(limit) = self.options.limit_bytes {
            let room = limit.saturating_sub(self.written);
            if added > room {
                out.truncate(start + room as usize);
                added = room;
            }
        }
        self.written += added;
    }
}

/// The files holding `path`'s records, oldest first.
fn files_oldest_first(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    let mut n = 1;
    loop {
        let p = rotated_path(path, n);
        if !p.exists() {
            break;
        }
        rotated.push((n, p));
        n += 1;
    }
    rotated
        .into_iter()
        .rev()
        .map(|(_, p)| p)
        .chain([path.to_path_buf()])
        .collect()
}

/// Index of the first record of the last `n` lines (a line is a run of `P` records and its `F`).
fn tail_start(lines: &[&[u8]], n: usize) -> usize {
    let mut full = 0;
    for i in (0..lines.len()).rev() {
        let partial = parse(lines[i]).is_some_and(|r| r.partial);
        // A complete line ends at an F record (or at a trailing partial one).
        if !partial || i == lines.len() - 1 {
            if full == n {
                return i + 1;
            }
            full += 1;
        }
    }
    0
}

#[derive(Debug)]
struct Follow {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    buffer: Vec<u8>,
}

impl Follow {
    /// New complete lines appended since the last call, following a rotation to the new file.
    fn poll(&mut self) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        if let Some(file) = &mut self.file {
            file.read_to_end(&mut data)?;
        }
        match fs::metadata(&self.path) {
            Ok(meta) if self.file.is_none() || meta.ino() != self.inode => {
                // Rotated (or created): the old file is fully read above. Files rotated after it
                // (newer than ours, older than the current one) are read next, oldest first.
                if self.file.is_some() {
                    let rotated: Vec<PathBuf> = (1..)
                        .map(|n| rotated_path(&self.path, n))
                        .take_while(|p| p.exists())
                        .collect();
                    if let Some(ours) = rotated
                        .iter()
                        .position(|p| fs::metadata(p).is_ok_and(|m| m.ino() == self.inode))
                    {
                        for newer in rotated[..ours].iter().rev() {
                            File::open(newer)?.read_to_end(&mut data)?;
                        }
                    }
                }
                let mut file = File::open(&self.path)?;
                file.read_to_end(&mut data)?;
                self.inode = meta.ino();
                self.file = Some(file);
            }
            Ok(meta) => {
                // Truncated in place (max_files == 1): start over.
                if let Some(file) = &mut self.file
                    && meta.len() < file.stream_position()?
                {
                    file.seek(SeekFrom::Start(0))?;
                    file.read_to_end(&mut data)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.buffer.extend_from_slice(&data);
        let complete = match self.buffer.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                let rest = self.buffer.split_off(i + 1);
                std::mem::replace(&mut self.buffer, rest)
            }
            None => Vec::new(),
        };
        Ok(complete)
    }
}

/// Everything in `path`'s files, oldest first, and the current file (open at its end).
fn read_all(path: &Path) -> io::Result<(Vec<u8>, Option<File>)> {
    let mut all = Vec::new();
    let mut last = None;
    for file in files_oldest_first(path) {
        match File::open(&file) {
            Ok(mut f) => {
                f.read_to_end(&mut all)?;
                last = (file == path).then_some(f);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((all, last))
}

/// Reads a container's log: its rotated files, then (when following) whatever is appended.
/// The stream never ends on its own while following: the caller drops it (e.g. when the
/// container exited and the stream returned nothing new).
pub fn read(
    path: &Path,
    options: LogOptions,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + use<> {
    enum Phase {
        Initial,
        Following(Follow, Formatter),
        Done,
    }
    let path = path.to_path_buf();
    futures::stream::unfold(Phase::Initial, move |phase| {
        let path = path.clone();
        let options = options.clone();
        async move {
            match phase {
                Phase::Initial => {
                    let mut formatter = Formatter {
                        options: options.clone(),
                        at_line_start: true,
                        written: 0,
                    };
                    // File reads run off the async workers: rotated logs can be large.
                    let read_path = path.clone();
                    let (mut all, last) =
                        match tokio::task::spawn_blocking(move || read_all(&read_path)).await {
                            Ok(Ok(read)) => read,
                            Ok(Err(e)) => return Some((Err(e), Phase::Done)),
                            Err(e) => return Some((Err(io::Error::other(e)), Phase::Done)),
                        };
                    // An incomplete last record is left for the follower.
                    let complete = all.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    let rest = all.split_off(complete);
                    let lines: Vec<&[u8]> = all
                        .split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .collect();
                    let start = options.tail_lines.map_or(0, |n| tail_start(&lines, n));
                    let mut out = Vec::new();
                    for line in &lines[start..] {
                        if formatter.done() {
                            break;
                        }
                        formatter.format(line, &mut out);
                    }
                    let next = if options.follow && !formatter.done() {
                        let inode = last
                            .as_ref()
                            .and_then(|f| f.metadata().ok())
                            .map_or(0, |m| m.ino());
                        Phase::Following(
                            Follow {
                                path: path.clone(),
                                file: last,
                                inode,
                                buffer: rest,
                            },
                            formatter,
                        )
                    } else {
                        Phase::Done
                    };
                    Some((Ok(out), next))
                }
                Phase::Following(mut follow, mut formatter) => loop {
                    let polled = tokio::task::spawn_blocking(move || {
                        let data = follow.poll();
                        (follow, data)
                    })
                    .await;
                    let (back, data) = match polled {
                        Ok(polled) => polled,
                        Err(e) => return Some((Err(io::Error::other(e)), Phase::Done)),
                    };
                    follow = back;
                    match data {
                        Err(e) => return Some((Err(e), Phase::Done)),
                        Ok(data) if data.is_empty() => tokio::time::sleep(FOLLOW_POLL).await,
                        Ok(data) => {
                            let mut out = Vec::new();
                            for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                                formatter.format(line, &mut out);
                            }
                            let next = if formatter.done() {
                                Phase::Done
                            } else {
                                Phase::Following(follow, formatter)
                            };
                            return Some((Ok(out), next));
                        }
                    }
                },
                Phase::Done => None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn collect(path: &Path, options: LogOptions) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let chunks: Vec<_> = read(path, options).collect().await;
            let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
            String::from_utf8(bytes).unwrap()
        })
    }

    #[test]
    fn writes_full_and_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, 1 << 20, 2).unwrap();
        w.write(LogStream::Stdout, b"hello\nwor").unwrap();
        w.write(LogStream::Stderr, b"oops\n").unwrap();
        w.write(LogStream::Stdout, b"ld\nend").unwrap();
        w.finish(LogStream::Stdout).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let records: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            records,
            [
                "stdout F hello",
                "stderr F oops",
                "stdout F world",
                "stdout P end"
            ]
        );
        let ts = text.split(' ').next().unwrap();
        assert_eq!(ts.len(), "2006-01-02T15:04:05.000000000Z".len());
        assert!(DateTime::parse_from_rfc3339(ts).is_ok());
        assert_eq!(
            collect(&path, LogOptions::default()),
            "hello\noops\nworld\nend"
        );
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, 1 << 20, 2).unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        w.write(LogStream::Stdout, &long).unwrap();
        w.write(LogStream::Stdout, b"\n").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "F"]);
        assert_eq!(collect(&path, LogOptions::default()).len(), MAX_LINE + 11);
    }

    #[test]
    fn rotates_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, 1024, 3).unwrap();
        for i in 0..100 {
            w.write(
                LogStream::Stdout,
                format!("line {i:03} {}\n", "y".repeat(40)).as_bytes(),
            )
            .unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() <= 1024);
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        let all = collect(&path, LogOptions::default());
        assert!(all.ends_with(&format!("line 099 {}\n", "y".repeat(40))));
        assert!(!all.contains("line 000"), "the oldest file was dropped");
        let tail = collect(
            &path,
            LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(tail.lines().count(), 2);
        assert!(tail.starts_with("line 098"));
    }

    #[test]
    fn timestamps_since_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        fs::write(
            &path,
            "2024-01-01T00:00:00.000000000Z stdout F old\n\
             2024-01-02T00:00:00.000000000Z stdout P ne\n\
             2024-01-02T00:00:01.000000000Z stdout F w\n",
        )
        .unwrap();
        let since = DateTime::parse_from_rfc3339("2024-01-01T12:00:00Z")
            .unwrap()
            .to_utc();
        let out = collect(
            &path,
            LogOptions {
                since: Some(since),
                timestamps: true,
                ..Default::default()
            },
        );
        assert_eq!(out, "2024-01-02T00:00:00.000000000Z new\n");
        let out = collect(
            &path,
            LogOptions {
                limit_bytes: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(out, "old\nn");
    }

    #[test]
    fn one_stream_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, 1 << 20, 1).unwrap();
        w.write(LogStream::Stdout, b"out 1\n").unwrap();
        w.write(LogStream::Stderr, b"err 1\n").unwrap();
        w.write(LogStream::Stdout, b"out 2\n").unwrap();
        let only = |stream| {
            collect(
                &path,
                LogOptions {
                    stream: Some(stream),
                    ..Default::default()
                },
            )
        };
        assert_eq!(only(LogStream::Stdout), "out 1\nout 2\n");
        assert_eq!(only(LogStream::Stderr), "err 1\n");
        assert_eq!(
            collect(&path, LogOptions::default()),
            "out 1\nerr 1\nout 2\n"
        );
    }

    #[test]
    fn follow_sees_appends_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        // Enough files that nothing is dropped: the follower must still see every line even
        // though the file rotates several times between two of its polls.
        let mut w = LogWriter::open(&path, 1024, 8).unwrap();
        w.write(LogStream::Stdout, b"first\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stream = read(
                &path,
                LogOptions {
                    follow: true,
                    ..Default::default()
                },
            );
            let mut stream = Box::pin(stream);
            assert_eq!(stream.next().await.unwrap().unwrap(), b"first\n");
            // Enough to rotate at least once.
            for i in 0..40 {
                w.write(
                    LogStream::Stdout,
                    format!("more {i:02} {}\n", "z".repeat(30)).as_bytes(),
                )
                .unwrap();
            }
            let mut seen = String::new();
            while !seen.contains("more 39") {
                let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .expect("follow delivers")
                    .unwrap()
                    .unwrap();
                seen.push_str(std::str::from_utf8(&chunk).unwrap());
            }
            assert!(rotated_path(&path, 2).exists(), "rotated more than once");
            for i in 0..40 {
                assert!(
                    seen.contains(&format!("more {i:02} ")),
                    "missing line {i}: {seen}"
                );
            }
        });
    }
}

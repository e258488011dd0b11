//! The run log and JSON files on disk: appending events, resuming a log, atomic writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{parse_log, Event, LogParse};
use crate::{Error, Result};

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// Appends events to `log.jsonl`, one line each.
///
/// Each event is one `write_all` of the whole line on a file opened in append mode, so
/// a crash can tear at most the last line, which readers skip and
/// [`LogWriter::open_for_resume`] removes.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
    dropped_bytes: u64,
}

impl LogWriter {
    /// Opens `path` for appending, creating it and its parent directories.
    pub fn open(path: &Path) -> Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(path))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io_error(path))?;
        Ok(LogWriter { file, path: path.to_path_buf(), dropped_bytes: 0 })
    }

    /// Opens the log of a run being resumed: first cuts a torn last line (the bytes after
    /// the last newline, left by a crash) so the new events do not continue it.
    pub fn open_for_resume(path: &Path) -> Result<LogWriter> {
        let mut dropped_bytes = 0;
        if path.exists() {
            let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_error(path))?;
            let len = file.metadata().map_err(io_error(path))?.len();
            let keep = complete_lines_len(&mut file, len).map_err(io_error(path))?;
            if keep < len {
                file.set_len(keep).map_err(io_error(path))?;
                file.sync_data().map_err(io_error(path))?;
                dropped_bytes = len - keep;
            }
        }
        let mut writer = LogWriter::open(path)?;
        writer.dropped_bytes = dropped_bytes;
        Ok(writer)
    }

    /// Appends one event as one line.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        let mut line = serde_json::to_string(event).map_err(|e| {
            Error::format(self.path.display().to_string(), format!("cannot serialise a {} event: {e}", event.name()))
        })?;
        line.push('\n');
        let io = io_error(&self.path);
        self.file.write_all(line.as_bytes()).and_then(|()| self.file.flush()).map_err(io)
    }

    /// Bytes of a torn last line that [`LogWriter::open_for_resume`] removed.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Length of the prefix of `file` that ends with its last newline (0 if it has none),
/// scanning back from the end in blocks so a long log is not read whole.
fn complete_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut buffer = vec![0u8; BLOCK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(block)?;
        if let Some(newline) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Reads and parses a `log.jsonl` file (invalid UTF-8, e.g. a torn multi-byte
/// character, only spoils its own line).
pub fn read_log(path: &Path) -> Result<LogParse> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    Ok(parse_log(&String::from_utf8_lossy(&bytes)))
}

/// Writes `value` as pretty JSON atomically (for `summary.json`, `compare.json`).
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::format(path.display().to_string(), format!("cannot serialise to JSON: {e}")))?;
    json.push(b'\n');
    crate::fsutil::write_atomic(path, &json)
}

/// Reads a JSON file written by [`write_json_atomic`].
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::format(
            path.display().to_string(),
            format!("is not the JSON autoprog expects ({e}); rerun the command that writes it"),
        )
    })
}

/// Current Unix time in seconds, for `run_start` / `run_end`.
pub fn unix_time_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

//! Function logs kept on disk, `<data-dir>/runtime/logs/<function>.log`.
//!
//! One thread appends them, so that an invocation never blocks a Tokio worker on file I/O
//! (a write can wait for the file system's journal while the queue fsyncs on the same disk),
//! and logs that arrive together are written with one open and one write per function.
//! Files are opened per batch rather than kept open, so moving a log file away (rotation)
//! takes effect at once.

use std::io::Write;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

/// Logs waiting for the thread, at most; appending waits beyond that.
const BACKLOG: usize = 4096;

pub(crate) struct LogArchive {
    entries: mpsc::Sender<Entry>,
}

struct Entry {
    function_name: String,
    text: String,
    written: oneshot::Sender<()>,
}

impl LogArchive {
    /// Starts the thread that appends to the logs in `dir`.
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let (entries, receiver) = mpsc::channel(BACKLOG);
        std::thread::Builder::new()
            .name("invoq-function-logs".into())
            .spawn(move || append_batches(&dir, receiver))?;
        Ok(LogArchive { entries })
    }

    /// Appends `text` to the function's log and returns once it is written (not synced:
    /// these logs are for people, not for recovery).
    pub(crate) async fn append(&self, function_name: &str, text: String) {
        let (written, done) = oneshot::channel();
        let entry = Entry {
            function_name: function_name.to_owned(),
            text,
            written,
        };
        if self.entries.send(entry).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn append_batches(dir: &std::path::Path, mut receiver: mpsc::Receiver<Entry>) {
    let mut batch = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < BACKLOG
            && let Ok(entry) = receiver.try_recv()
        {
            batch.push(entry);
        }
        // A stable sort keeps each function's logs in the order they came.
        batch.sort_by(|a, b| a.function_name.cmp(&b.function_name));
        for logs in batch.chunk_by(|a, b| a.function_name == b.function_name) {
            let path = dir.join(format!("{}.log", logs[0].function_name));
            let text: String = logs.iter().map(|entry| entry.text.as_str()).collect();
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(text.as_bytes()));
            if let Err(error) = appended {
                tracing::warn!(%error, path = %path.display(), "cannot keep function log");
            }
        }
        for entry in batch.drain(..) {
            let _ = entry.written.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_land_in_their_function_files_in_order_once_append_returns() {
        let dir = tempfile::tempdir().unwrap();
        let archive = std::sync::Arc::new(LogArchive::open(dir.path().join("logs")).unwrap());
        let writers: Vec<_> = ["alpha", "beta"]
            .into_iter()
            .map(|function| {
                let archive = archive.clone();
                tokio::spawn(async move {
                    for n in 0..200 {
                        archive.append(function, format!("{function} {n}\n")).await;
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        for function in ["alpha", "beta"] {
            let log =
                std::fs::read_to_string(dir.path().join(format!("logs/{function}.log"))).unwrap();
            let expected: String = (0..200).map(|n| format!("{function} {n}\n")).collect();
            assert_eq!(log, expected);
        }
    }
}

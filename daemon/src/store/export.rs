//! The JSON-lines export (`[export] jsonl = PATH`): every committed event,
//! with its id, one JSON object per line, for shippers that tail a file.
//! The writer calls it after each commit; SIGHUP asks it to reopen the path
//! (logrotate renames the file, then signals).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;
use traceed_wire::LiveEvent;

#[derive(Debug, thiserror::Error)]
#[error("export file {path}: {source}")]
pub struct ExportError {
    path: PathBuf,
    source: std::io::Error,
}

pub struct Exporter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    reopen: Arc<Notify>,
    /// Set after a failed write so the log says it once, not per batch.
    failing: bool,
}

impl Exporter {
    /// Open (append, create) `path` now, so a bad path fails at start.
    pub fn open(path: &Path) -> Result<Self, ExportError> {
        let mut e = Self {
            path: path.into(),
            out: None,
            reopen: Arc::new(Notify::new()),
            failing: false,
        };
        e.out = Some(e.open_file()?);
        Ok(e)
    }

    fn open_file(&self) -> Result<BufWriter<File>, ExportError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ExportError {
                path: self.path.clone(),
                source,
            })?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|source| ExportError {
                path: self.path.clone(),
                source,
            })?;
        Ok(BufWriter::with_capacity(256 << 10, f))
    }

    /// Notified (SIGHUP) to reopen the path; the writer waits on it.
    pub fn reopen_handle(&self) -> Arc<Notify> {
        self.reopen.clone()
    }

    /// Close the current file and open the path again (it may be new).
    pub fn reopen(&mut self) {
        if let Some(mut old) = self.out.take() {
            let _ = old.flush();
        }
        match self.open_file() {
            Ok(f) => {
                self.out = Some(f);
                self.failing = false;
                tracing::info!(path = %self.path.display(), "export file reopened");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the export file; export paused until the next SIGHUP")
            }
        }
    }

    /// Append committed events and flush, so a reader sees whole lines.
    pub fn write(&mut self, events: &[LiveEvent]) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let res = (|| -> std::io::Result<()> {
            for e in events {
                serde_json::to_writer(&mut *out, e)?;
                out.write_all(b"\n")?;
            }
            out.flush()
        })();
        match res {
            Ok(()) => self.failing = false,
            Err(source) => {
                if !self.failing {
                    let e = ExportError {
                        path: self.path.clone(),
                        source,
                    };
                    tracing::error!(error = %e, "export write failed; events stay in the store");
                }
                self.failing = true;
            }
        }
    }
}

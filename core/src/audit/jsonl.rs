//! The JSON-lines file: appends, flushes and rotation by size or UTC day.

use std::io::Write;
use std::path::PathBuf;

use super::event::{AuditEvent, now_rfc3339_ms};

pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) rotate_bytes: u64,
    pub(super) file: Option<std::io::BufWriter<std::fs::File>>,
    pub(super) size: u64,
    pub(super) day: String,
    /// Rotations so far: keeps names unique when several happen within one millisecond.
    pub(super) rotations: u64,
    /// Reused line buffer.
    pub(super) line: Vec<u8>,
    pub(super) instance: crate::audit::InstanceName,
}

impl Writer {
    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(&self.path)?;
        // `mode` applies only to a file it creates.
        crate::util::make_private(&self.path);
        self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(std::io::BufWriter::with_capacity(256 * 1024, f));
        self.day = now_rfc3339_ms()[..10].to_string();
        Ok(())
    }

    fn rotate_if_due(&mut self, today: &str) -> std::io::Result<()> {
        if self.size < self.rotate_bytes && today == self.day {
            return Ok(());
        }
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        if self.size > 0 {
            let stamp = now_rfc3339_ms().replace(':', "-");
            self.rotations += 1;
            let rotated = self
                .path
                .with_extension(format!("log.{stamp}.{}", self.rotations));
            std::fs::rename(&self.path, rotated)?;
        }
        self.open()
    }

    pub(super) fn write(&mut self, e: &AuditEvent) -> std::io::Result<()> {
        let today = e.day();
        if self.file.is_none() {
            self.open()?;
        }
        self.rotate_if_due(&today)?;
        self.line.clear();
        // `{"instance_id":"gw-1",` then the event's own fields.
        let mut event = Vec::with_capacity(512);
        match e {
            AuditEvent::Call(c) => serde_json::to_writer(&mut event, c),
            AuditEvent::Other(g) => serde_json::to_writer(&mut event, g),
        }
        .map_err(std::io::Error::other)?;
        match self.instance.get() {
            Some(id) if event.first() == Some(&b'{') => {
                self.line.extend_from_slice(b"{\"instance_id\":");
                serde_json::to_writer(&mut self.line, id).map_err(std::io::Error::other)?;
                if event.len() > 2 {
                    self.line.push(b',');
                }
                self.line.extend_from_slice(&event[1..]);
            }
            _ => self.line.extend_from_slice(&event),
        }
        self.line.push(b'\n');
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.line)?;
        }
        self.size += self.line.len() as u64;
        Ok(())
    }

    pub(super) fn flush(&mut self) {
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.flush()
        {
            tracing::warn!(error = %e, "audit log flush failed");
        }
    }
}

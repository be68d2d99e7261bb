//! The JSON-lines file: appends, flushes and rotation by size or UTC day.

use std::io::Write;
use std::path::PathBuf;

use super::event::{AuditEvent, now_rfc3339_ms};

pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) rotate_bytes: u64,
    pub(super) file: Option<std::io::BufWriter<std::fs::File>>,
    pub(super) size: u64,
    /// The UTC day (`YYYY-MM-DD`) the open file belongs to.
    pub(super) day: [u8; 10],
    /// Rotations so far: keeps names unique when several happen within one millisecond.
    pub(super) rotations: u64,
    /// Reused line buffer.
    pub(super) line: Vec<u8>,
    pub(super) instance: crate::audit::InstanceName,
}

impl Writer {
    /// Opens (or creates) the file; a new or empty one is for lines of UTC day `day`.
    fn open(&mut self, day: [u8; 10]) -> std::io::Result<()> {
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
        let meta = f.metadata().ok();
        self.size = meta.as_ref().map_or(0, |m| m.len());
        // A file left by an earlier run belongs to the day it was last written.
        self.day = match meta.and_then(|m| m.modified().ok()) {
            Some(t) if self.size > 0 => crate::util::clock::StampMs::of(t).day(),
            _ => day,
        };
        self.file = Some(std::io::BufWriter::with_capacity(256 * 1024, f));
        Ok(())
    }

    fn rotate_if_due(&mut self, today: &[u8; 10]) -> std::io::Result<()> {
        if self.size < self.rotate_bytes && *today == self.day {
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
        self.open(*today)
    }

    pub(super) fn write(&mut self, e: &AuditEvent) -> std::io::Result<()> {
        let today = e.day();
        if self.file.is_none() {
            self.open(today)?;
        }
        self.rotate_if_due(&today)?;
        self.line.clear();
        // `{"instance_id":"gw-1",` then the event's own fields, serialized in place.
        let start = match self.instance.get() {
            Some(id) => {
                self.line.extend_from_slice(b"{\"instance_id\":");
                serde_json::to_writer(&mut self.line, id).map_err(std::io::Error::other)?;
                Some(self.line.len())
            }
            None => None,
        };
        match e {
            AuditEvent::Call(c) => serde_json::to_writer(&mut self.line, c),
            AuditEvent::Other(g) => serde_json::to_writer(&mut self.line, g),
        }
        .map_err(std::io::Error::other)?;
        if let Some(at) = start {
            // The event's own `{` becomes the separator, or goes when it has no fields.
            if self.line.get(at + 1) == Some(&b'}') {
                self.line.remove(at);
            } else {
                self.line[at] = b',';
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{CallAudit, GenericEvent};
    use std::time::{Duration, SystemTime};

    fn writer(dir: &std::path::Path, instance: Option<&str>) -> Writer {
        let name = crate::audit::InstanceName::default();
        if let Some(n) = instance {
            name.set(n.to_string()).unwrap();
        }
        Writer {
            path: dir.join("audit.log"),
            rotate_bytes: 1 << 30,
            file: None,
            size: 0,
            day: [0; 10],
            rotations: 0,
            line: Vec::new(),
            instance: name,
        }
    }

    fn call_at(unix: u64) -> AuditEvent {
        AuditEvent::Call(Box::new(CallAudit {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(unix * 1000 + 42),
            action: "POST /v1beta/models/m:generateContent".into(),
            status: 200,
            ..CallAudit::default()
        }))
    }

    fn lines(w: &mut Writer) -> Vec<serde_json::Value> {
        w.flush();
        std::fs::read_to_string(&w.path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_carry_the_instance_first_escaped_and_the_event_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Some("gw-\"1\"\n"));
        w.write(&call_at(1_765_000_000)).unwrap();
        let mut other = GenericEvent::new("SecurityEvent", "x", "Blocked").field("k", "v");
        other.timestamp = "2025-12-06T05:46:41.000Z".into();
        w.write(&AuditEvent::Other(Box::new(other))).unwrap();
        let got = lines(&mut w);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["instance_id"], "gw-\"1\"\n");
        assert_eq!(got[0]["timestamp"], "2025-12-06T05:46:40.042Z");
        assert_eq!(got[0]["status"], 200);
        assert_eq!(got[1]["instance_id"], "gw-\"1\"\n");
        assert_eq!(got[1]["k"], "v");
        let text = std::fs::read_to_string(&w.path).unwrap();
        assert!(
            text.lines()
                .all(|l| l.starts_with("{\"instance_id\":\"gw-"))
        );
    }

    #[test]
    fn lines_without_an_instance_are_the_event_alone_and_a_new_day_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), None);
        w.write(&call_at(1_765_000_000)).unwrap();
        let got = lines(&mut w);
        assert!(got[0].get("instance_id").is_none());
        assert_eq!(got[0]["event_type"], "ApiCall");
        // A call stamped on the next UTC day starts a new file.
        w.write(&call_at(1_765_000_000 + 86_400)).unwrap();
        let got = lines(&mut w);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["timestamp"], "2025-12-07T05:46:40.042Z");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2);
    }

    #[test]
    fn a_file_left_from_an_earlier_day_is_rotated_at_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut w = writer(dir.path(), None);
        w.write(&AuditEvent::Call(Box::new(CallAudit {
            at: now,
            ..CallAudit::default()
        })))
        .unwrap();
        w.flush();
        drop(w);
        // The gateway stopped yesterday with the file open.
        let f = std::fs::File::options()
            .append(true)
            .open(dir.path().join("audit.log"))
            .unwrap();
        f.set_modified(now - Duration::from_secs(86_400)).unwrap();
        let mut w = writer(dir.path(), None);
        w.write(&AuditEvent::Call(Box::new(CallAudit {
            at: now,
            ..CallAudit::default()
        })))
        .unwrap();
        assert_eq!(lines(&mut w).len(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}

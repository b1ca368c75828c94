//! Pending reuse revocations, kept where no transaction can take them back.
//!
//! A reuse detection revokes the session in the caller's transaction, and
//! the caller may roll that back (rule 4 of docs/design.md). So before the
//! detecting call returns, it also records the detection as an empty file,
//! `pg_session_auth/<database oid>-<session id>-<detected at>-<presented
//! generation>-<current generation>.reuse` under the data directory, made
//! durable (the file and the directory are fsynced). Files are not
//! transactional: the record outlives a rollback, a disconnect, a prepared
//! transaction, a restart and a crash of the server.
//!
//! The backstop (see `backstop`) applies each record in a transaction of its
//! own and deletes the file once the session is revoked, gone, or was
//! already revoked (by the detecting transaction, when it committed).
//! Detections are rare (each is a theft), so the fsyncs cost nothing that
//! matters, and the names hold no secret: a database id, a session id, a
//! time and two generation numbers.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pgrx::pg_sys;

use crate::clock::Micros;
use crate::ids::SessionId;

/// Relative to the data directory, the working directory of every backend.
const DIRECTORY: &str = "pg_session_auth";
const SUFFIX: &str = ".reuse";

/// One detected reuse, for the backstop to make sure of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    pub database: pg_sys::Oid,
    pub session_id: SessionId,
    pub detected_at: Micros,
    pub presented_generation: i32,
    pub current_generation: i32,
}

impl Detection {
    fn file_name(&self) -> String {
        format!(
            "{}_{}_{}_{}_{}{SUFFIX}",
            u32::from(self.database),
            self.session_id,
            self.detected_at,
            self.presented_generation,
            self.current_generation
        )
    }

    fn parse(name: &str) -> Option<Detection> {
        let fields: Vec<&str> = name.strip_suffix(SUFFIX)?.split('_').collect();
        let [database, session_id, detected_at, presented, current] = fields[..] else {
            return None;
        };
        Some(Detection {
            database: pg_sys::Oid::from(database.parse::<u32>().ok()?),
            session_id: session_id.parse().ok()?,
            detected_at: detected_at.parse().ok()?,
            presented_generation: presented.parse().ok()?,
            current_generation: current.parse().ok()?,
        })
    }
}

/// Records a detection durably. An error means the record may not exist:
/// the caller must not report the detection as made.
pub fn record(detection: &Detection) -> io::Result<()> {
    let dir = Path::new(DIRECTORY);
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        sync_directory(Path::new("."))?;
    }
    let path = dir.join(detection.file_name());
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.sync_all()?;
    sync_directory(dir)
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Every pending detection, with the file that records it; empty if there
/// is no directory yet.
pub fn all() -> Vec<(PathBuf, Detection)> {
    let Ok(entries) = fs::read_dir(DIRECTORY) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, Detection)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let detection = Detection::parse(name.to_str()?)?;
            Some((e.path(), detection))
        })
        .collect();
    found.sort_by_key(|(_, d)| (d.detected_at, d.session_id));
    found
}

/// The pending detections of one database.
pub fn of_database(database: pg_sys::Oid) -> Vec<(PathBuf, Detection)> {
    all()
        .into_iter()
        .filter(|(_, d)| d.database == database)
        .collect()
}

/// Forgets a detection that has been made sure of. A file that is already
/// gone (another backstop got there first) is fine.
pub fn done(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => pgrx::warning!(
            "pg_session_auth: could not remove {}: {e}; it will be checked again",
            path.display()
        ),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let d = Detection {
            database: pg_sys::Oid::from(16384u32),
            session_id: SessionId::from_bytes([0xab; 16]),
            detected_at: -1_234_567,
            presented_generation: 3,
            current_generation: i32::MAX,
        };
        let name = d.file_name();
        assert!(name.ends_with(".reuse"), "{name}");
        assert_eq!(Detection::parse(&name), Some(d));
        assert_eq!(Detection::parse("16384_x.reuse"), None);
        assert_eq!(Detection::parse(&name.replace(".reuse", ".tmp")), None);
        assert_eq!(Detection::parse(""), None);
    }
}

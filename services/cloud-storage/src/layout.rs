//! Where a store's files live under its root directory, and the one-time
//! move from the first layout.
//!
//! ```text
//! <root>/metadata/   sled's own directory (nothing else is ever put here)
//! <root>/records/    one object file per record:   hex(record id)
//! <root>/blobs/      one file per deduplicated blob: BlobKey::file_name
//! <root>/staging/    blob uploads in progress:      hex(record id)
//! ```
//!
//! Every name is derived from an id through a fixed alphabet (lowercase
//! hex), never from the id's bytes themselves: record ids are client-chosen
//! and blob ids are hashes of client-chosen bytes, which can be ground
//! offline until they hold `/`, `..` or an absolute prefix.
//!
//! The first layout kept sled's files at the root and our `objects/` and
//! `blobs/` inside sled's directory; sled keeps its own large values in
//! `blobs/` too, so our startup sweep could have removed them. [`Layout::prepare`]
//! moves such a store into the layout above before sled opens, and
//! [`Legacy`] finishes the move of the ciphertext files once the metadata
//! can be read.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::DomainError;
use crate::blobs::{BlobKey, hex};

/// The directories of one store.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) metadata: PathBuf,
    records: PathBuf,
    blobs: PathBuf,
    staging: PathBuf,
}

/// A first-layout store found at the root: its ciphertext files still carry
/// their old names in `objects/` and `blobs/`.
#[derive(Debug)]
pub(crate) struct Legacy {
    objects: PathBuf,
    blobs: PathBuf,
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> DomainError {
    DomainError::files(format!("{}: {e}", path.display()))
}

/// sled's files at the root of a first-layout store.
fn is_sled_file(name: &str) -> bool {
    name == "conf" || name == "db" || name.starts_with("snap.")
}

/// sled names its blob files by a decimal log sequence number; ours were 64
/// hex digits (or `owner.hex`).
fn is_sled_blob(name: &str) -> bool {
    !name.is_empty() && name.len() < 64 && name.bytes().all(|b| b.is_ascii_digit())
}

fn sync_dir(dir: &Path) -> Result<(), DomainError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn rename(from: &Path, to: &Path) -> Result<(), DomainError> {
    std::fs::rename(from, to).map_err(|e| io_error(from, e))
}

fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, DomainError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let e = e.map_err(|e| io_error(dir, e))?;
        match e.file_name().into_string() {
            Ok(name) => out.push((name, e.path())),
            Err(name) => {
                tracing::warn!(?name, dir = %dir.display(), "ignoring a file whose name is not UTF-8")
            }
        }
    }
    Ok(out)
}

impl Layout {
    /// Creates the layout under `root`, first moving a first-layout store's
    /// sled files into `metadata/` (resumable: a crash part-way leaves
    /// `metadata.partial/`, which the next start completes).
    pub(crate) fn prepare(root: &Path) -> Result<(Self, Option<Legacy>), DomainError> {
        std::fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
        let layout = Layout {
            metadata: root.join("metadata"),
            records: root.join("records"),
            blobs: root.join("blobs.v2"),
            staging: root.join("staging"),
        };
        let partial = root.join("metadata.partial");
        let legacy_sled = root.join("conf").exists() || partial.exists();
        if legacy_sled && !layout.metadata.exists() {
            tracing::warn!(root = %root.display(), "moving a first-layout store into metadata/, records/ and blobs.v2/");
            std::fs::create_dir_all(partial.join("blobs")).map_err(|e| io_error(&partial, e))?;
            for (name, path) in entries(root)? {
                if is_sled_file(&name) {
                    rename(&path, &partial.join(&name))?;
                }
            }
            let old_blobs = root.join("blobs");
            if old_blobs.is_dir() {
                for (name, path) in entries(&old_blobs)? {
                    if is_sled_blob(&name) {
                        rename(&path, &partial.join("blobs").join(&name))?;
                    }
                }
            }
            sync_dir(&partial)?;
            rename(&partial, &layout.metadata)?;
            sync_dir(root)?;
        }
        for dir in [&layout.records, &layout.blobs, &layout.staging] {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        let legacy = Legacy {
            objects: root.join("objects"),
            blobs: root.join("blobs"),
        };
        let legacy = (legacy.objects.exists() || legacy.blobs.exists()).then_some(legacy);
        Ok((layout, legacy))
    }

    pub(crate) fn record_path(&self, record_id: &str) -> PathBuf {
        self.records.join(hex(record_id.as_bytes()))
    }

    pub(crate) fn blob_path(&self, key: &BlobKey) -> PathBuf {
        self.blobs.join(key.file_name())
    }

    pub(crate) fn staging_path(&self, record_id: &str) -> PathBuf {
        self.staging.join(hex(record_id.as_bytes()))
    }

    /// A fresh, empty object file for an upload (replacing any leftover).
    /// Its directory entry is durable only after [`Self::sync_records_dir`]
    /// (which concurrent uploads share).
    pub(crate) fn create_record(&self, record_id: &str) -> Result<File, DomainError> {
        let path = self.record_path(record_id);
        File::create(&path).map_err(|e| io_error(&path, e))
    }

    /// Makes the entries of every object file created so far durable.
    pub(crate) fn sync_records_dir(&self) -> Result<(), DomainError> {
        sync_dir(&self.records)
    }

    pub(crate) fn create_staging(&self, record_id: &str) -> Result<File, DomainError> {
        let path = self.staging_path(record_id);
        File::create(&path).map_err(|e| io_error(&path, e))
    }

    /// Moves a staged blob upload into place (durably).
    pub(crate) fn publish_blob(&self, record_id: &str, key: &BlobKey) -> Result<(), DomainError> {
        rename(&self.staging_path(record_id), &self.blob_path(key))?;
        sync_dir(&self.blobs)
    }

    /// Removes a file; returns whether there was one.
    pub(crate) fn remove(path: &Path) -> Result<bool, DomainError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(path, e)),
        }
    }

    pub(crate) fn open_read(path: &Path) -> Result<Option<File>, DomainError> {
        match File::open(path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// Record object files as (name, path).
    pub(crate) fn record_files(&self) -> Result<Vec<(String, PathBuf)>, DomainError> {
        entries(&self.records)
    }

    /// Published blob files as (name, path).
    pub(crate) fn blob_files(&self) -> Result<Vec<(String, PathBuf)>, DomainError> {
        entries(&self.blobs)
    }

    /// Staged blob uploads.
    pub(crate) fn staged_files(&self) -> Result<Vec<PathBuf>, DomainError> {
        Ok(entries(&self.staging)?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// The record id a record file name stands for, if it is one of ours.
    pub(crate) fn record_id_of(name: &str) -> Option<String> {
        let bytes = hex_decode(name)?;
        String::from_utf8(bytes).ok()
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Legacy {
    /// Moves the first layout's ciphertext files to their new names, given
    /// the record ids and blob keys the metadata knows. A file whose old name
    /// was not a plain name (an id ground to hold `/`) was never inside the
    /// store and is not looked for; a record whose file cannot be found is
    /// reported and left to fail reads as corrupt, never silently dropped.
    pub(crate) fn finish(
        self,
        layout: &Layout,
        record_ids: &[String],
        blob_keys: &[BlobKey],
    ) -> Result<(), DomainError> {
        let mut moved = 0usize;
        if self.objects.is_dir() {
            for id in record_ids {
                let old = self.objects.join(id);
                if old.is_file() {
                    rename(&old, &layout.record_path(id))?;
                    moved += 1;
                }
            }
        }
        if self.blobs.is_dir() {
            for key in blob_keys {
                let Some(name) = key.legacy_file_name() else {
                    tracing::error!(blob = %key.file_name(), "a first-layout blob had no plain file name; its records will read as corrupt");
                    continue;
                };
                let old = self.blobs.join(name);
                if old.is_file() {
                    rename(&old, &layout.blob_path(key))?;
                    moved += 1;
                }
            }
        }
        sync_dir(&layout.records)?;
        sync_dir(&layout.blobs)?;
        // What is left is staging leftovers and orphans no metadata names:
        // exactly what the sweep would have removed in the first layout.
        for dir in [&self.objects, &self.blobs.join("tmp"), &self.blobs] {
            if dir.is_dir() {
                for (_, path) in entries(dir)? {
                    if path.is_file() {
                        Layout::remove(&path)?;
                    }
                }
                if let Err(e) = std::fs::remove_dir(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a first-layout directory");
                }
            }
        }
        tracing::info!(files = moved, "first-layout ciphertext files moved");
        Ok(())
    }
}

//! The mesh file: where a client finds the mesh.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::deadline::{TimeoutSettings, Timeouts};

/// A mesh file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MeshFileError {
    /// The mesh file.
    pub path: String,
    /// Why it was refused.
    pub reason: String,
}

/// What a client needs to reach a mesh: written by `sesphrd dev` as
/// `DIR/mesh.toml`, read by `sesphr --mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The SPIFFE trust domain of the mesh's identities.
    pub trust_domain: String,
    /// PEM file of the mesh CA.
    pub ca: PathBuf,
    /// Enrollment token (dev meshes only; production hands it out of band).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
    /// CloudStorage's URL (`https://host:port`).
    pub cloud_storage: String,
    /// The SRS's URL.
    pub srs: String,
    /// AccessPolicy's URL.
    pub access_policy: String,
    /// `[timeouts]`: the client's deadlines, in milliseconds (see
    /// [`Timeouts`]); absent keys keep their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutSettings>,
}

impl MeshFile {
    /// Reads and parses the mesh file at `path`.
    pub fn load(path: &Path) -> Result<Self, MeshFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| MeshFileError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut mesh: MeshFile = toml::from_str(&text).map_err(|e| MeshFileError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Err(reason) = mesh.timeouts() {
            return Err(MeshFileError {
                path: path.display().to_string(),
                reason,
            });
        }
        // A relative CA path is relative to the mesh file.
        if mesh.ca.is_relative()
            && let Some(dir) = path.parent()
        {
            mesh.ca = dir.join(&mesh.ca);
        }
        Ok(mesh)
    }
}

impl MeshFile {
    /// The client's deadlines: the defaults, changed by `[timeouts]`.
    pub fn timeouts(&self) -> Result<Timeouts, String> {
        self.timeouts.clone().unwrap_or_default().resolve()
    }
}

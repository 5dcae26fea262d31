//! The model store on disk and the detector definitions beside it.
//!
//! ```text
//! <data_dir>/detectors/<name>.json               detector definitions
//! <data_dir>/models/<name>/<version>/            published packages, never overwritten
//! <data_dir>/models/<name>/active                the serving version's name
//! <data_dir>/models/<name>/.staging-*/           uploads being checked (removed at start-up)
//! ```
//!
//! Every replacement is write-to-temporary, fsync, rename, fsync the directory, so a crash
//! leaves either the old file or the new one. All of this is blocking I/O: callers on the
//! async runtime run it in `spawn_blocking`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use vigil_models::package::is_valid_name;
use vigil_models::{
    LoadedPackage, Manifest, PackageError, TrustPolicy, MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE,
};

use crate::detector::{DetectorSpec, Serving};

/// The name of the pointer file; reserved, so no version can be called this.
const ACTIVE: &str = "active";

/// Largest manifest (or signature) an archive may hold: a manifest is a few KiB; a huge one
/// would only cost memory every time it is parsed.
pub const MAX_SMALL_FILE: u64 = vigil_models::package::MAX_MANIFEST_BYTES;

/// Why an uploaded archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write the upload to disk")]
    Io(#[from] std::io::Error),
}

/// The outcome of publishing a verified package.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Newly published.
    New,
    /// The same manifest was already published under this version: nothing changed.
    Unchanged,
    /// A different package already holds this version.
    Conflict,
}

/// Paths and operations of the store, and the trust policy every load is checked against.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    policy: std::sync::Arc<TrustPolicy>,
}

/// A models directory left by a deletion that did not finish.
fn is_doomed(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".deleted-"))
}

/// An upload unpacked in a staging directory, removed on drop unless published.
#[derive(Debug)]
pub struct Staged {
    dir: tempfile::TempDir,
}

impl Staged {
    /// Where the files are.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The saved detector definitions, as [`ModelStore::load_specs`] found them.
#[derive(Debug)]
pub struct SavedSpecs {
    pub specs: Vec<DetectorSpec>,
    /// Definitions that could not be read or parsed: detector name (the file's stem), why.
    pub unreadable: Vec<(String, String)>,
}

impl ModelStore {
    /// Opens the store under `data_dir`, creating its directories and clearing stale staging.
    pub fn open(data_dir: &Path, policy: TrustPolicy) -> anyhow::Result<ModelStore> {
        let store = ModelStore {
            root: data_dir.to_owned(),
            policy: std::sync::Arc::new(policy),
        };
        for dir in [store.root.join("models"), store.root.join("detectors")] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for entry in fs::read_dir(store.root.join("models"))? {
            let detector_dir = entry?.path();
            if !detector_dir.is_dir() {
                continue;
            }
            if is_doomed(&detector_dir) {
                tracing::info!(path = %detector_dir.display(), "removing a deleted detector's models");
                let _ = fs::remove_dir_all(&detector_dir);
                continue;
            }
            for inner in fs::read_dir(&detector_dir)? {
                let path = inner?.path();
                let stale = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".staging-") || n.starts_with(".tmp-"));
                if stale {
                    tracing::info!(path = %path.display(), "removing an interrupted upload");
                    let _ = if path.is_dir() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                }
            }
        }
        Ok(store)
    }

    fn detector_dir(&self, detector: &str) -> PathBuf {
        self.root.join("models").join(detector)
    }

    /// The trust policy every load is checked against.
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// A published version's manifest, if it can be read and parsed (without verifying the
    /// package: for ordering versions and for describing one that failed).
    pub fn manifest(&self, detector: &str, version: &str) -> Option<Manifest> {
        let bytes = fs::read(self.version_dir(detector, version).join(MANIFEST_FILE)).ok()?;
        Manifest::parse(&bytes).ok()
    }

    /// The directory of one version.
    pub fn version_dir(&self, detector: &str, version: &str) -> PathBuf {
        self.detector_dir(detector).join(version)
    }

    /// Saves a detector definition atomically.
    pub fn save_spec(&self, spec: &DetectorSpec) -> std::io::Result<()> {
        let dir = self.root.join("detectors");
        let bytes = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
        replace_file(&dir, &format!("{}.json", spec.name), &bytes)
    }

    /// Every saved detector definition, and the names of those that cannot be read or parsed
    /// (with why): one bad file must not keep the others from serving. The bad file is left
    /// as it is for an operator to look at; defining the detector again replaces it.
    pub fn load_specs(&self) -> anyhow::Result<SavedSpecs> {
        let mut specs = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(self.root.join("detectors"))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parsed = fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|bytes| {
                    serde_json::from_slice::<DetectorSpec>(&bytes)
                        .map_err(|e| format!("invalid detector definition {}: {e}", path.display()))
                });
            match parsed {
                Ok(spec) => specs.push(spec),
                Err(reason) => unreadable.push((name, reason)),
            }
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        unreadable.sort();
        Ok(SavedSpecs { specs, unreadable })
    }

    /// Published versions of a detector, in no particular order.
    pub fn versions(&self, detector: &str) -> std::io::Result<Vec<String>> {
        let dir = self.detector_dir(detector);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut versions = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() && is_valid_name(&name) {
                versions.push(name);
            }
        }
        Ok(versions)
    }

    /// Removes the oldest versions (by manifest creation time) beyond the newest `keep`,
    /// never one named in `protected` (the active and the serving version). A removal renames
    /// the directory out of the way first, so a crash leaves either the version or a `.tmp-`
    /// directory that the next start clears.
    pub fn prune(
        &self,
        detector: &str,
        keep: usize,
        protected: &[&str],
    ) -> std::io::Result<Vec<String>> {
        let mut dated: Vec<(String, String)> = self
            .versions(detector)?
            .into_iter()
            .map(|v| {
                let created = self
                    .manifest(detector, &v)
                    .map(|m| m.created_at)
                    .unwrap_or_default();
                (created, v)
            })
            .collect();
        dated.sort();
        let mut excess = dated.len().saturating_sub(keep.max(1));
        let mut removed = Vec::new();
        for (_, version) in dated {
            if excess == 0 {
                break;
            }
            if protected.contains(&version.as_str()) {
                continue;
            }
            self.remove_version(detector, &version)?;
            removed.push(version);
            excess -= 1;
        }
        Ok(removed)
    }

    /// Removes one published version (the caller has checked it neither serves nor is
    /// active): renamed out of the way first, so a crash leaves the version or a `.tmp-`
    /// directory that the next start clears.
    pub fn remove_version(&self, detector: &str, version: &str) -> std::io::Result<()> {
        let doomed = self.detector_dir(detector).join(format!(".tmp-{version}"));
        fs::rename(self.version_dir(detector, version), &doomed)?;
        File::open(self.detector_dir(detector))?.sync_all()?;
        fs::remove_dir_all(&doomed)
    }

    /// Removes a detector's models and then its definition. The models directory is renamed
    /// to `.deleted-NAME` first (cleared at the next start if a crash interrupts), so a
    /// detector defined again under the name never finds the old versions.
    pub fn remove_detector(&self, detector: &str) -> std::io::Result<()> {
        let models = self.root.join("models");
        let dir = self.detector_dir(detector);
        let doomed = models.join(format!(".deleted-{detector}"));
        // An unreadable definition's name comes from its file name: only a valid one ever
        // had models.
        if is_valid_name(detector) && dir.exists() {
            if doomed.exists() {
                fs::remove_dir_all(&doomed)?;
            }
            fs::rename(&dir, &doomed)?;
            File::open(&models)?.sync_all()?;
        }
        let spec = self.root.join("detectors").join(format!("{detector}.json"));
        match fs::remove_file(&spec) {
            Ok(()) => File::open(self.root.join("detectors"))?.sync_all()?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        if doomed.exists() {
            fs::remove_dir_all(&doomed)?;
        }
        Ok(())
    }

    /// The active version, if one was ever activated.
    pub fn active(&self, detector: &str) -> std::io::Result<Option<String>> {
        match fs::read_to_string(self.detector_dir(detector).join(ACTIVE)) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Points `active` at `version`, atomically.
    pub fn set_active(&self, detector: &str, version: &str) -> std::io::Result<()> {
        replace_file(
            &self.detector_dir(detector),
            ACTIVE,
            format!("{version}\n").as_bytes(),
        )
    }

    /// Unpacks an uploaded tar into a fresh staging directory, refusing anything but the
    /// package's own files (optionally inside one top-level directory): no links, no special
    /// files, no absolute paths, no `..`.
    pub fn stage_archive(
        &self,
        detector: &str,
        archive: impl Read,
    ) -> Result<Staged, ArchiveError> {
        let parent = self.detector_dir(detector);
        fs::create_dir_all(&parent)?;
        let dir = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&parent)?;
        let invalid = |message: String| ArchiveError::Invalid(message);
        let mut seen: HashSet<&'static str> = HashSet::new();
        let mut prefix: Option<PathBuf> = None;
        let mut tar = tar::Archive::new(archive);
        let entries = tar
            .entries()
            .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| invalid(format!("the archive is damaged or truncated: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| invalid(format!("an entry has an unreadable path: {e}")))?
                .into_owned();
            let mut parts: Vec<&str> = Vec::new();
            for component in path.components() {
                match component {
                    Component::Normal(part) => parts.push(
                        part.to_str()
                            .ok_or_else(|| invalid("entry names must be UTF-8".into()))?,
                    ),
                    Component::CurDir => {}
                    _ => {
                        return Err(invalid(format!(
                            "entry {} leaves the package directory",
                            path.display()
                        )))
                    }
                }
            }
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                if parts.len() > 1 {
                    return Err(invalid(format!("unexpected directory {}", path.display())));
                }
                continue;
            }
            if !kind.is_file() {
                return Err(invalid(format!(
                    "entry {} is a link or special file; only regular files are allowed",
                    path.display()
                )));
            }
            let name = match parts.as_slice() {
                [name] => *name,
                [dir, name] => {
                    let dir = PathBuf::from(dir);
                    if prefix.get_or_insert_with(|| dir.clone()) != &dir {
                        return Err(invalid("files must share one top-level directory".into()));
                    }
                    *name
                }
                _ => return Err(invalid(format!("unexpected entry {}", path.display()))),
            };
            let known = [MANIFEST_FILE, WEIGHTS_FILE, SIGNATURE_FILE]
                .into_iter()
                .find(|known| *known == name)
                .ok_or_else(|| invalid(format!("unexpected file {name}")))?;
            if !seen.insert(known) {
                return Err(invalid(format!("{name} appears twice")));
            }
            if known != WEIGHTS_FILE && entry.size() > MAX_SMALL_FILE {
                return Err(invalid(format!(
                    "{name} is {} bytes; at most {MAX_SMALL_FILE} are allowed",
                    entry.size()
                )));
            }
            // Streamed to disk: an upload never holds a whole entry in memory.
            let mut file = File::create_new(dir.path().join(known))?;
            std::io::copy(&mut entry, &mut file).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.kind() == std::io::ErrorKind::InvalidData
                {
                    invalid(format!("the archive is damaged or truncated: {e}"))
                } else {
                    ArchiveError::Io(e)
                }
            })?;
            file.sync_all()?;
        }
        for required in [MANIFEST_FILE, WEIGHTS_FILE] {
            if !seen.contains(required) {
                return Err(invalid(format!("the archive has no {required}")));
            }
        }
        File::open(dir.path())?.sync_all()?;
        Ok(Staged { dir })
    }

    /// Writes a package built in memory (on-box training) into a staging directory.
    pub fn stage_files(
        &self,
        detector: &str,
        manifest: &[u8],
        weights: &[u8],
    ) -> std::io::Result<Staged> {
        let parent = self.detector_dir(detector);
        fs::create_dir_all(&parent)?;
        let dir = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&parent)?;
        for (name, bytes) in [(MANIFEST_FILE, manifest), (WEIGHTS_FILE, weights)] {
            let mut file = File::create_new(dir.path().join(name))?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        File::open(dir.path())?.sync_all()?;
        Ok(Staged { dir })
    }

    /// Moves a verified staging directory into place as `version`. A version is never
    /// overwritten: the same manifest again is `Unchanged`, a different one is `Conflict`.
    pub fn publish(
        &self,
        staged: Staged,
        detector: &str,
        version: &str,
    ) -> std::io::Result<Published> {
        let target = self.version_dir(detector, version);
        if target.exists() {
            let existing = fs::read(target.join(MANIFEST_FILE)).unwrap_or_default();
            let uploaded = fs::read(staged.path().join(MANIFEST_FILE))?;
            return Ok(if existing == uploaded {
                Published::Unchanged
            } else {
                Published::Conflict
            });
        }
        let staging = staged.dir.keep();
        fs::rename(&staging, &target)?;
        File::open(self.detector_dir(detector))?.sync_all()?;
        Ok(Published::New)
    }

    /// Loads and verifies one published version under the trust policy.
    pub fn load(&self, detector: &str, version: &str) -> Result<LoadedPackage, PackageError> {
        self.load_dir(&self.version_dir(detector, version))
    }

    /// Loads and verifies a package directory (a staged upload, say) under the trust policy.
    pub fn load_dir(&self, dir: &Path) -> Result<LoadedPackage, PackageError> {
        LoadedPackage::load_with(dir, &self.policy)
    }

    /// What should serve a detector at start-up: its active version if that verifies;
    /// otherwise the newest version that does (with the reason it is degraded); otherwise
    /// the statistical detector.
    pub fn load_serving(&self, spec: &DetectorSpec) -> (Serving, Option<String>) {
        let detector = spec.name.as_str();
        let active = match self.active(detector) {
            Ok(active) => active,
            Err(err) => {
                return self.fallback(spec, None, format!("cannot read the active pointer: {err}"));
            }
        };
        let Some(active) = active else {
            return (Serving::Statistical, None);
        };
        match self.load_compatible(spec, &active) {
            Ok(package) => (Serving::Package(package.into()), None),
            Err(why) => self.fallback(
                spec,
                Some(&active),
                format!("active version {active} failed verification: {why}"),
            ),
        }
    }

    fn load_compatible(&self, spec: &DetectorSpec, version: &str) -> Result<LoadedPackage, String> {
        let package = self
            .load(&spec.name, version)
            .map_err(|err| format!("{} ({})", err.reason(), error_chain(&err)))?;
        if !package.manifest().schema.same_inputs(&spec.schema) {
            return Err(
                "schema_mismatch (the package reads other features than the detector)".into(),
            );
        }
        Ok(package)
    }

    /// What serves instead of `failed`: the newest other version that verifies, or the
    /// statistical detector; with the reason, for the degraded state.
    pub fn fallback_serving(
        &self,
        spec: &DetectorSpec,
        failed: &str,
        why: String,
    ) -> (Serving, String) {
        let (serving, reason) = self.fallback(spec, Some(failed), why.clone());
        (serving, reason.unwrap_or(why))
    }

    fn fallback(
        &self,
        spec: &DetectorSpec,
        failed: Option<&str>,
        why: String,
    ) -> (Serving, Option<String>) {
        let mut candidates: Vec<(String, String)> = self
            .versions(&spec.name)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| Some(v.as_str()) != failed)
            .filter_map(|v| Some((self.manifest(&spec.name, &v)?.created_at, v)))
            .collect();
        candidates.sort();
        for (_, version) in candidates.into_iter().rev() {
            if let Ok(package) = self.load_compatible(spec, &version) {
                let reason = format!("{why}; serving {version} instead");
                return (Serving::Package(package.into()), Some(reason));
            }
        }
        (
            Serving::Statistical,
            Some(format!(
                "{why}; no other version verifies, serving the statistical detector"
            )),
        )
    }
}

/// `err` and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Replaces `dir/name` atomically: temporary file, fsync, rename, fsync the directory.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, dir.join(name))?;
    File::open(dir)?.sync_all()
}

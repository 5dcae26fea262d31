//! The model lifecycle's one owner: detector definitions, published versions, the active
//! pointer, what each detector serves, and the events that record every change.
//!
//! Uploads, activations, on-box promotions, re-verification, definitions and start-up all go
//! through [`Registry`]. The model store on disk is reachable only through its lock, so every
//! change — check the candidate against the detector *as it is now*, publish, point `active`
//! at it, swap it in, prune old versions, record the event — happens as one step that no other
//! change can interleave with. Scoring never takes that lock: it reads the detector map and
//! each detector's serving model lock-free (`ArcSwap`).
//!
//! All of it is blocking file work: async callers run it in `spawn_blocking`; training runs
//! call it from their own thread.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::Serialize;
use vigil_datasets::{EventKind, ModelEvent, ObservationLog};
use vigil_models::{LoadedPackage, Manifest, SignatureState, TrustPolicy};

use crate::detector::{Detector, DetectorSpec, Serving};
use crate::store::{error_chain, ArchiveError, ModelStore, Published, Staged};
use crate::writer::LogWriter;

/// Why a lifecycle change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no detector named {0:?}")]
    UnknownDetector(String),
    #[error("no version {version:?} of detector {detector:?}")]
    UnknownVersion { detector: String, version: String },
    #[error("{0}")]
    InvalidDetector(String),
    #[error("{0}")]
    SchemaConflict(String),
    #[error("version {0:?} already exists with different contents")]
    VersionExists(String),
    #[error("{0}")]
    InvalidArchive(String),
    /// The package failed verification or does not fit the detector; `reason` is stable.
    #[error("package refused ({reason}): {message}")]
    Rejected {
        reason: &'static str,
        message: String,
    },
    /// The configuration file declares the detector: the API may not change or delete it.
    #[error("detector {0:?} is declared in the configuration file")]
    Declared(String),
    /// The version serves, or is the active one: it may not be deleted.
    #[error("version {version:?} of detector {detector:?} is {role}")]
    VersionInUse {
        detector: String,
        version: String,
        role: &'static str,
    },
    #[error("the model store failed")]
    Store(#[source] anyhow::Error),
}

impl LifecycleError {
    fn store(err: impl Into<anyhow::Error>, what: &'static str) -> LifecycleError {
        LifecycleError::Store(err.into().context(what))
    }

    fn rejected(err: &vigil_models::PackageError) -> LifecycleError {
        LifecycleError::Rejected {
            reason: err.reason(),
            message: error_chain(err),
        }
    }

    /// The stable reason a refusal is recorded and counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            LifecycleError::Rejected { reason, .. } => reason,
            LifecycleError::UnknownDetector(_) => "unknown_detector",
            LifecycleError::UnknownVersion { .. } => "unknown_version",
            LifecycleError::InvalidDetector(_) => "invalid_detector",
            LifecycleError::SchemaConflict(_) => "schema_conflict",
            LifecycleError::VersionExists(_) => "version_exists",
            LifecycleError::InvalidArchive(_) => "invalid_archive",
            LifecycleError::Declared(_) => "declared_in_config",
            LifecycleError::VersionInUse { .. } => "version_in_use",
            LifecycleError::Store(_) => "internal",
        }
    }
}

/// A published version, as listings show it: read and verified once, when first listed or
/// published, never again for a listing (a version directory is never overwritten).
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub created_at: Option<String>,
    pub parent: Option<String>,
    pub threshold: Option<f32>,
    pub training: serde_json::Value,
    pub evaluation: serde_json::Value,
    pub manifest_blake3: Option<String>,
    pub verification: Verification,
    pub signer: Option<String>,
    pub signature: Option<SignatureState>,
}

/// Whether a version verified, and if not, why.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verification {
    Verified,
    Failed {
        reason: &'static str,
        message: String,
    },
}

impl VersionInfo {
    fn of(package: &LoadedPackage) -> VersionInfo {
        let manifest = package.manifest();
        let mut info = VersionInfo::from_manifest(&manifest.version, Some(manifest));
        info.manifest_blake3 = Some(package.manifest_digest().to_hex());
        info.signer = package.signature().signer().map(str::to_owned);
        info.signature = Some(package.signature().clone());
        info
    }

    fn from_manifest(version: &str, manifest: Option<&Manifest>) -> VersionInfo {
        VersionInfo {
            version: version.to_owned(),
            created_at: manifest.map(|m| m.created_at.clone()),
            parent: manifest.and_then(|m| m.parent.clone()),
            threshold: manifest.map(|m| m.threshold.value),
            training: manifest.map_or(serde_json::Value::Null, |m| m.training.clone()),
            evaluation: manifest.map_or(serde_json::Value::Null, |m| m.evaluation.clone()),
            manifest_blake3: None,
            verification: Verification::Verified,
            signer: None,
            signature: None,
        }
    }

    fn failed(
        version: &str,
        manifest: Option<&Manifest>,
        err: &vigil_models::PackageError,
    ) -> Self {
        VersionInfo {
            verification: Verification::Failed {
                reason: err.reason(),
                message: error_chain(err),
            },
            ..VersionInfo::from_manifest(version, manifest)
        }
    }
}

/// What an upload did.
#[derive(Debug)]
pub struct Uploaded {
    pub version: String,
    pub id: String,
    pub manifest_blake3: String,
    /// False when the same package was already published (nothing changed on disk).
    pub new: bool,
    pub activated: bool,
}

/// The state behind the lock: the store, and what each version is.
#[derive(Debug)]
struct Lifecycle {
    store: ModelStore,
    /// Per detector, per version: listings read this, not the packages.
    versions: HashMap<String, HashMap<String, VersionInfo>>,
}

/// The owner of the model lifecycle (see the module documentation).
#[derive(Debug)]
pub struct Registry {
    /// Detectors by name, read lock-free by scoring; replaced only under `lifecycle`.
    detectors: ArcSwap<HashMap<String, Arc<Detector>>>,
    /// Saved definitions that could not be read at start-up, with why: not served, reported
    /// degraded until the detector is defined again.
    unreadable: ArcSwap<HashMap<String, String>>,
    lifecycle: Mutex<Lifecycle>,
    /// The trust policy every load is checked against (a copy, for reading without the lock).
    policy: Arc<TrustPolicy>,
    writer: LogWriter,
    keep_versions: usize,
    /// Detectors the configuration file declares: the file wins at every start, so the API
    /// may not redefine or delete them (a change would silently revert at the next start).
    declared: HashSet<String>,
}

/// Detectors as start-up found them, before the writer runs.
#[derive(Debug)]
pub struct Loaded {
    pub detectors: HashMap<String, Arc<Detector>>,
    /// The names the configuration file declares.
    pub declared: HashSet<String>,
    pub unreadable: HashMap<String, String>,
    /// Degradations found while loading, for the log.
    pub events: Vec<ModelEvent>,
}

/// Loads every saved definition and those declared in the configuration file (which win, and
/// are saved), and what each serves; rebuilds each detector's stream state from the log.
pub fn load(
    store: &ModelStore,
    declared: &[DetectorSpec],
    log: &ObservationLog,
) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    let crate::store::SavedSpecs { specs, unreadable } = store.load_specs()?;
    let mut unreadable: HashMap<String, String> = unreadable.into_iter().collect();
    for (name, reason) in &unreadable {
        tracing::error!(
            detector = name,
            reason,
            "detector definition unreadable; not served"
        );
    }
    let mut specs: HashMap<String, DetectorSpec> =
        specs.into_iter().map(|s| (s.name.clone(), s)).collect();
    for spec in declared {
        spec.validate()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("detector {:?} in the config file", spec.name))?;
        if let Some(saved) = specs.get(&spec.name) {
            let schema_changed = !saved.schema.same_inputs(&spec.schema);
            anyhow::ensure!(
                !schema_changed || store.versions(&spec.name)?.is_empty(),
                "detector {:?} in the config file changes the features of a detector that has model versions",
                spec.name
            );
        }
        store.save_spec(spec)?;
        unreadable.remove(&spec.name);
        specs.insert(spec.name.clone(), spec.clone());
    }
    let counts = log.counts()?;
    let mut detectors = HashMap::new();
    let mut events = Vec::new();
    for (name, spec) in specs {
        let (serving, degraded) = store.load_serving(&spec);
        let detector = Detector::new(spec, serving);
        detector.add_observed(counts.get(&name).copied().unwrap_or(0));
        if let Some(reason) = &degraded {
            tracing::warn!(detector = name, reason, "detector degraded at start-up");
            events.push(event(
                &name,
                EventKind::Degraded,
                Some(detector.serving().version()),
                Some(reason.clone()),
            ));
        }
        detector.set_degraded(degraded);
        detector
            .restore(log, &name)
            .context("cannot rebuild windows from the log")?;
        tracing::info!(
            detector = name,
            serving = detector.serving().version(),
            "detector loaded"
        );
        detectors.insert(name, Arc::new(detector));
    }
    Ok(Loaded {
        detectors,
        declared: declared.iter().map(|spec| spec.name.clone()).collect(),
        unreadable,
        events,
    })
}

fn event(
    detector: &str,
    kind: EventKind,
    version: Option<&str>,
    reason: Option<String>,
) -> ModelEvent {
    ModelEvent {
        detector: detector.to_owned(),
        at: crate::api::unix_now(),
        event: kind,
        version: version.map(str::to_owned),
        reason,
    }
}

/// Checks that a verified package belongs to `spec`'s detector and reads its inputs.
fn check_fits(spec: &DetectorSpec, package: &LoadedPackage) -> Result<(), LifecycleError> {
    let manifest = package.manifest();
    if manifest.detector != spec.name {
        return Err(LifecycleError::Rejected {
            reason: "detector_mismatch",
            message: format!(
                "the package is for detector {:?}, not {:?}",
                manifest.detector, spec.name
            ),
        });
    }
    if !manifest.schema.same_inputs(&spec.schema) {
        return Err(LifecycleError::Rejected {
            reason: "schema_mismatch",
            message: "the package reads other features, or another window, than the detector \
                      has now"
                .into(),
        });
    }
    if manifest.version == "active" {
        return Err(LifecycleError::Rejected {
            reason: "manifest_inconsistent",
            message: "\"active\" is reserved and cannot be a version".into(),
        });
    }
    Ok(())
}

impl Registry {
    /// The registry over `store` and the detectors start-up loaded.
    pub fn new(store: ModelStore, loaded: Loaded, writer: LogWriter, keep_versions: usize) -> Self {
        Registry {
            detectors: ArcSwap::from_pointee(loaded.detectors),
            unreadable: ArcSwap::from_pointee(loaded.unreadable),
            policy: Arc::new(store.policy().clone()),
            lifecycle: Mutex::new(Lifecycle {
                store,
                versions: HashMap::new(),
            }),
            writer,
            keep_versions,
            declared: loaded.declared,
        }
    }

    /// Whether the configuration file declares the detector `name`.
    pub fn is_declared(&self, name: &str) -> bool {
        self.declared.contains(name)
    }

    fn lock(&self) -> MutexGuard<'_, Lifecycle> {
        // A panic under the lock leaves files in a state every step already tolerates (a
        // staging directory, a version without `active` pointing at it): carry on.
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A detector by name.
    pub fn detector(&self, name: &str) -> Option<Arc<Detector>> {
        self.detectors.load().get(name).cloned()
    }

    /// A detector by name, or the error that names it.
    pub fn get(&self, name: &str) -> Result<Arc<Detector>, LifecycleError> {
        self.detector(name)
            .ok_or_else(|| LifecycleError::UnknownDetector(name.to_owned()))
    }

    /// Every detector with its name, sorted by name.
    pub fn list(&self) -> Vec<(String, Arc<Detector>)> {
        let mut all: Vec<_> = self
            .detectors
            .load()
            .iter()
            .map(|(name, d)| (name.clone(), d.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The trust policy packages are checked against.
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// Degraded states by detector name: detectors that serve but not as they should, and
    /// saved definitions that could not be read.
    pub fn degraded(&self) -> HashMap<String, String> {
        let mut degraded = HashMap::clone(&self.unreadable.load());
        for (name, detector) in self.detectors.load().iter() {
            if let Some(reason) = detector.degraded() {
                degraded.insert(name.clone(), reason.to_string());
            }
        }
        degraded
    }

    fn record(&self, events: Vec<ModelEvent>) {
        for event in events {
            if let Err(err) = self.writer.record_blocking(event) {
                tracing::warn!(?err, "could not record a model event");
            }
        }
    }

    /// Creates or updates a detector. Returns whether it was created. A detector with
    /// published versions keeps its feature schema.
    pub fn define(&self, spec: DetectorSpec) -> Result<bool, LifecycleError> {
        if self.is_declared(&spec.name) {
            return Err(LifecycleError::Declared(spec.name));
        }
        spec.validate().map_err(LifecycleError::InvalidDetector)?;
        let lifecycle = self.lock();
        let existing = self.detector(&spec.name);
        if let Some(existing) = &existing {
            let current = existing.spec();
            if *current == spec {
                return Ok(false);
            }
            if !current.schema.same_inputs(&spec.schema) {
                let versions = lifecycle
                    .store
                    .versions(&spec.name)
                    .map_err(|e| LifecycleError::store(e, "cannot list versions"))?;
                if !versions.is_empty() {
                    return Err(LifecycleError::SchemaConflict(format!(
                        "detector {:?} has model versions for its current features and window; \
                         create a new detector for a different schema",
                        spec.name
                    )));
                }
            }
        }
        lifecycle
            .store
            .save_spec(&spec)
            .map_err(|e| LifecycleError::store(e, "cannot save the detector definition"))?;
        let name = spec.name.clone();
        match existing {
            Some(existing) => {
                existing.update_spec(spec);
                Ok(false)
            }
            None => {
                let detector = Arc::new(Detector::new(spec, Serving::Statistical));
                self.unreadable.rcu(|current| {
                    let mut next = HashMap::clone(current);
                    next.remove(&name);
                    next
                });
                self.detectors.rcu(|current| {
                    let mut next = HashMap::clone(current);
                    next.insert(name.clone(), detector.clone());
                    next
                });
                tracing::info!(detector = name, "detector created");
                Ok(true)
            }
        }
    }

    /// Verifies a package archive read from `archive`, publishes it and (if `activate`) swaps
    /// it in. A refusal is recorded and counted with its reason.
    pub fn upload(
        &self,
        name: &str,
        archive: impl Read,
        activate: bool,
    ) -> Result<Uploaded, LifecycleError> {
        let detector = self.get(name)?;
        let mut lifecycle = self.lock();
        let outcome = self.upload_locked(&mut lifecycle, &detector, archive, activate);
        match outcome {
            Ok((uploaded, events)) => {
                drop(lifecycle);
                self.record(events);
                Ok(uploaded)
            }
            Err(err) => {
                drop(lifecycle);
                let reason = err.reason();
                tracing::warn!(detector = name, reason, error = %err, "package refused");
                metrics::counter!("vigil_packages_refused_total", "reason" => reason).increment(1);
                self.record(vec![event(
                    name,
                    EventKind::Refused,
                    None,
                    Some(format!("{reason}: {err}")),
                )]);
                Err(err)
            }
        }
    }

    fn upload_locked(
        &self,
        lifecycle: &mut Lifecycle,
        detector: &Detector,
        archive: impl Read,
        activate: bool,
    ) -> Result<(Uploaded, Vec<ModelEvent>), LifecycleError> {
        let spec = detector.spec();
        let staged =
            lifecycle
                .store
                .stage_archive(&spec.name, archive)
                .map_err(|err| match err {
                    ArchiveError::Invalid(message) => LifecycleError::InvalidArchive(message),
                    ArchiveError::Io(err) => LifecycleError::store(err, "cannot stage the upload"),
                })?;
        // Verify what is on disk, not what was in memory: that is what a restart will load.
        let package = lifecycle
            .store
            .load_dir(staged.path())
            .map_err(|e| LifecycleError::rejected(&e))?;
        check_fits(&spec, &package)?;
        let uploaded = Uploaded {
            version: package.version().to_owned(),
            id: package.manifest().id(),
            manifest_blake3: package.manifest_digest().to_hex(),
            new: true,
            activated: activate,
        };
        let (new, events) = self.install(lifecycle, detector, staged, package, activate)?;
        Ok((Uploaded { new, ..uploaded }, events))
    }

    /// Publishes a verified, fitting package from `staged` and, if asked, activates and swaps
    /// it in, then prunes. Under the lock.
    fn install(
        &self,
        lifecycle: &mut Lifecycle,
        detector: &Detector,
        staged: Staged,
        package: LoadedPackage,
        activate: bool,
    ) -> Result<(bool, Vec<ModelEvent>), LifecycleError> {
        let name = detector.spec().name.clone();
        let version = package.version().to_owned();
        let published = lifecycle
            .store
            .publish(staged, &name, &version)
            .map_err(|e| LifecycleError::store(e, "cannot publish the package"))?;
        if published == Published::Conflict {
            return Err(LifecycleError::VersionExists(version));
        }
        let mut events = Vec::new();
        let new = published == Published::New;
        if new {
            lifecycle
                .versions
                .entry(name.clone())
                .or_default()
                .insert(version.clone(), VersionInfo::of(&package));
            events.push(event(&name, EventKind::Published, Some(&version), None));
        }
        if activate {
            lifecycle
                .store
                .set_active(&name, &version)
                .map_err(|e| LifecycleError::store(e, "cannot activate"))?;
            detector.swap(Serving::Package(Arc::new(package)));
            detector.set_degraded(None);
            events.push(event(&name, EventKind::Activated, Some(&version), None));
            tracing::info!(detector = name, version, "version activated");
        }
        events.extend(self.prune(lifecycle, detector));
        Ok((new, events))
    }

    /// Removes versions beyond `keep_versions`, oldest first, never the active or the
    /// serving one. A failure is logged: pruning is housekeeping, never a reason to refuse.
    fn prune(&self, lifecycle: &mut Lifecycle, detector: &Detector) -> Vec<ModelEvent> {
        let name = detector.spec().name.clone();
        let active = lifecycle
            .store
            .active(&name)
            .ok()
            .flatten()
            .unwrap_or_default();
        let serving = detector.serving().version().to_owned();
        match lifecycle
            .store
            .prune(&name, self.keep_versions, &[&active, &serving])
        {
            Ok(removed) => {
                if let Some(known) = lifecycle.versions.get_mut(&name) {
                    for version in &removed {
                        known.remove(version);
                    }
                }
                if !removed.is_empty() {
                    tracing::info!(detector = name, ?removed, "old versions removed");
                }
                removed
                    .iter()
                    .map(|v| event(&name, EventKind::Pruned, Some(v), None))
                    .collect()
            }
            Err(err) => {
                tracing::warn!(%err, detector = name, "cannot remove old versions");
                Vec::new()
            }
        }
    }

    /// Deletes a detector: its definition and every model version, from disk and from what
    /// is served (a request that already holds the detector finishes on it; the caller holds
    /// the scoring gate so that none is between scoring and queueing its rows, and retires
    /// the detector so none starts). A definition that could not be read is deleted the same
    /// way. What the log holds of it is the caller's to forget (the log has one writer).
    pub fn delete(&self, name: &str) -> Result<Option<Arc<Detector>>, LifecycleError> {
        if self.is_declared(name) {
            return Err(LifecycleError::Declared(name.to_owned()));
        }
        let detector = self.detector(name);
        if detector.is_none() && !self.unreadable.load().contains_key(name) {
            return Err(LifecycleError::UnknownDetector(name.to_owned()));
        }
        let mut lifecycle = self.lock();
        lifecycle
            .store
            .remove_detector(name)
            .map_err(|e| LifecycleError::store(e, "cannot delete the detector"))?;
        lifecycle.versions.remove(name);
        if let Some(detector) = &detector {
            detector.retire();
        }
        self.detectors.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(name);
            next
        });
        self.unreadable.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(name);
            next
        });
        drop(lifecycle);
        tracing::info!(detector = name, "detector deleted");
        self.record(vec![event(name, EventKind::Deleted, None, None)]);
        Ok(detector)
    }

    /// Deletes a published version that neither serves nor is the active one.
    pub fn delete_version(&self, name: &str, version: &str) -> Result<(), LifecycleError> {
        let detector = self.get(name)?;
        let mut lifecycle = self.lock();
        let on_disk = lifecycle
            .store
            .versions(name)
            .map_err(|e| LifecycleError::store(e, "cannot list versions"))?;
        if !on_disk.iter().any(|v| v == version) {
            return Err(LifecycleError::UnknownVersion {
                detector: name.to_owned(),
                version: version.to_owned(),
            });
        }
        let active = lifecycle
            .store
            .active(name)
            .map_err(|e| LifecycleError::store(e, "cannot read the active pointer"))?;
        let role = if detector.serving().version() == version {
            Some("serving")
        } else if active.as_deref() == Some(version) {
            Some("the active version")
        } else {
            None
        };
        if let Some(role) = role {
            return Err(LifecycleError::VersionInUse {
                detector: name.to_owned(),
                version: version.to_owned(),
                role,
            });
        }
        lifecycle
            .store
            .remove_version(name, version)
            .map_err(|e| LifecycleError::store(e, "cannot delete the version"))?;
        if let Some(known) = lifecycle.versions.get_mut(name) {
            known.remove(version);
        }
        drop(lifecycle);
        tracing::info!(detector = name, version, "version deleted");
        self.record(vec![event(name, EventKind::Deleted, Some(version), None)]);
        Ok(())
    }

    /// Serves a published version (a rollback or roll-forward).
    pub fn activate(&self, name: &str, version: &str) -> Result<(), LifecycleError> {
        let detector = self.get(name)?;
        let lifecycle = self.lock();
        let known = lifecycle
            .store
            .versions(name)
            .map_err(|e| LifecycleError::store(e, "cannot list versions"))?
            .iter()
            .any(|v| v == version);
        if !known {
            return Err(LifecycleError::UnknownVersion {
                detector: name.to_owned(),
                version: version.to_owned(),
            });
        }
        let package = lifecycle
            .store
            .load(name, version)
            .map_err(|e| LifecycleError::rejected(&e))?;
        check_fits(&detector.spec(), &package)?;
        lifecycle
            .store
            .set_active(name, version)
            .map_err(|e| LifecycleError::store(e, "cannot activate"))?;
        detector.swap(Serving::Package(Arc::new(package)));
        detector.set_degraded(None);
        drop(lifecycle);
        tracing::info!(detector = name, version, "version activated");
        self.record(vec![event(name, EventKind::Activated, Some(version), None)]);
        Ok(())
    }

    /// Promotes a candidate fitted on the box: signed with `key`, staged, verified from disk,
    /// checked against the detector as it is *now* (its schema may have changed while the
    /// run fitted), published, activated, swapped in, old versions pruned. A candidate that
    /// no longer fits is refused (and the serving model stays).
    pub fn promote(
        &self,
        name: &str,
        manifest: &[u8],
        weights: &[u8],
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(), LifecycleError> {
        let detector = self.get(name)?;
        let mut lifecycle = self.lock();
        let staged = lifecycle
            .store
            .stage_files(name, manifest, weights)
            .map_err(|e| LifecycleError::store(e, "cannot stage the candidate"))?;
        vigil_models::signature::sign_dir(staged.path(), key)
            .map_err(|e| LifecycleError::store(e, "cannot sign the candidate"))?;
        let package = lifecycle
            .store
            .load_dir(staged.path())
            .map_err(|e| LifecycleError::rejected(&e))?;
        check_fits(&detector.spec(), &package)?;
        let (_, events) = self.install(&mut lifecycle, &detector, staged, package, true)?;
        drop(lifecycle);
        self.record(events);
        Ok(())
    }

    /// Published versions of a detector, oldest first, each read and verified once.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, LifecycleError> {
        self.get(name)?;
        let mut lifecycle = self.lock();
        let Lifecycle { store, versions } = &mut *lifecycle;
        let known = versions.entry(name.to_owned()).or_default();
        let on_disk = store
            .versions(name)
            .map_err(|e| LifecycleError::store(e, "cannot list versions"))?;
        known.retain(|version, _| on_disk.contains(version));
        for version in on_disk {
            if known.contains_key(&version) {
                continue;
            }
            let info = match store.load(name, &version) {
                Ok(package) => VersionInfo::of(&package),
                Err(err) => {
                    let manifest = store.manifest(name, &version);
                    VersionInfo::failed(&version, manifest.as_ref(), &err)
                }
            };
            known.insert(version, info);
        }
        let mut listed: Vec<VersionInfo> = known.values().cloned().collect();
        listed.sort_by(|a, b| (&a.created_at, &a.version).cmp(&(&b.created_at, &b.version)));
        Ok(listed)
    }

    /// The active version of a detector, if one was ever activated.
    pub fn active(&self, name: &str) -> Result<Option<String>, LifecycleError> {
        self.lock()
            .store
            .active(name)
            .map_err(|e| LifecycleError::store(e, "cannot read the active pointer"))
    }

    /// Re-reads and verifies from disk the package each detector serves. One that no longer
    /// verifies is replaced by the newest version that does (or the statistical detector),
    /// and the detector is marked degraded; returns those detectors with why.
    pub fn reverify(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for (name, detector) in self.list() {
            // One detector at a time: the lock is never held for long.
            let mut lifecycle = self.lock();
            let serving = detector.serving();
            let Serving::Package(package) = serving.as_ref() else {
                continue;
            };
            let version = package.version().to_owned();
            let Err(err) = lifecycle.store.load(&name, &version) else {
                continue;
            };
            let why = format!(
                "serving version {version} no longer verifies on disk: {} ({})",
                err.reason(),
                error_chain(&err)
            );
            if let Some(known) = lifecycle.versions.get_mut(&name) {
                let manifest = Some(package.manifest());
                known.insert(
                    version.clone(),
                    VersionInfo::failed(&version, manifest, &err),
                );
            }
            let (replacement, reason) =
                lifecycle
                    .store
                    .fallback_serving(&detector.spec(), &version, why);
            let now_serving = replacement.version().to_owned();
            detector.swap(replacement);
            detector.set_degraded(Some(reason.clone()));
            drop(lifecycle);
            tracing::error!(detector = name, reason, "re-verification failed");
            metrics::counter!("vigil_reverify_failures_total", "detector" => name.clone())
                .increment(1);
            self.record(vec![event(
                &name,
                EventKind::Degraded,
                Some(&now_serving),
                Some(reason.clone()),
            )]);
            failed.push((name, reason));
        }
        failed
    }
}

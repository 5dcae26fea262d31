//! The model package: `manifest.json` + `weights.safetensors` (+ `manifest.sig` later), and the
//! only way to turn one into a servable model, [`LoadedPackage::verify`].
//!
//! Verification reads each file once, hashes the weights and parses the *same* bytes, then
//! checks tensor names, shapes, dtypes and finiteness against the architecture, builds the
//! model with the constructor the trainer uses, and finally replays the golden rows. The
//! first failed check is returned as a [`PackageError`] with a stable reason.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::architecture::{Architecture, Scorer};
use crate::error::{ModelError, PackageError};
use crate::schema::{FeatureSchema, Normalisation};
use crate::score::Scores;
use crate::signature::{SignatureState, TrustPolicy};

/// The package format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a package directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the weights inside a package directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the optional detached signature of `manifest.json`.
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// A blake3 digest, written as 64 lower-case hex digits (what `b3sum` prints).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(blake3::Hash);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(blake3::hash(bytes))
    }

    /// The digest as hex.
    pub fn to_hex(&self) -> String {
        self.0.to_hex().to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        blake3::Hash::from_hex(hex.as_bytes())
            .map(Digest)
            .map_err(|_| serde::de::Error::custom("blake3 digest must be 64 hex digits"))
    }
}

/// The architecture and its hyper-parameters; the input width comes from the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// [`DenseAutoencoder`](crate::dense::DenseAutoencoder) with these hidden widths.
    DenseAutoencoder { hidden: Vec<usize> },
    /// [`ConvAutoencoder`](crate::conv::ConvAutoencoder) over the schema's window with these
    /// hidden channel counts and kernel length.
    ConvAutoencoder { channels: Vec<usize>, kernel: usize },
}

impl ModelSpec {
    /// A short name of the architecture.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::DenseAutoencoder { .. } => "dense_autoencoder",
            ModelSpec::ConvAutoencoder { .. } => "conv_autoencoder",
        }
    }
}

/// The alarm threshold on the score and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// A score above this value is an anomaly.
    pub value: f32,
    /// How the value was obtained: `fixed`, `quantile`, `pot`, …
    pub method: String,
    /// Method parameters (for example the quantile), free-form.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// One golden row: a raw input (before normalisation) and the score it must give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenRow {
    pub input: Vec<f32>,
    pub score: f32,
}

/// Rows the loaded model must reproduce: `|got − expected| ≤ tolerance · max(1, |expected|)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenCheck {
    pub tolerance: f32,
    pub rows: Vec<GoldenRow>,
}

/// The weights file a manifest vouches for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsRef {
    pub file: String,
    pub blake3: Digest,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub detector: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub model: ModelSpec,
    pub schema: FeatureSchema,
    pub normalisation: Normalisation,
    pub threshold: Threshold,
    /// Provenance: data range, sample count, epochs, losses. Free-form.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Evaluation figures. Free-form.
    #[serde(default)]
    pub evaluation: serde_json::Value,
    pub golden: GoldenCheck,
    pub weights: WeightsRef,
}

/// Only the field needed to decide whether the rest can be read.
#[derive(Deserialize)]
struct FormatProbe {
    format_version: u32,
}

/// Largest manifest a package may have: a manifest is a few KiB (golden rows and figures
/// included); anything near this is an attack on the memory of whoever parses it.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// True for names usable as detector names and versions (and so as directory names).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Manifest {
    /// Parses manifest bytes: the format version first, so that a future format is reported as
    /// such rather than as a parse error.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, PackageError> {
        let probe: FormatProbe =
            serde_json::from_slice(bytes).map_err(PackageError::ManifestInvalid)?;
        if probe.format_version != FORMAT_VERSION {
            return Err(PackageError::UnsupportedFormat {
                found: probe.format_version,
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(PackageError::ManifestInvalid)
    }

    /// `detector@version`: how packages are named in logs and answers.
    pub fn id(&self) -> String {
        format!("{}@{}", self.detector, self.version)
    }

    /// The architecture this manifest describes.
    pub fn architecture(&self) -> Architecture {
        Architecture::from_spec(&self.model, &self.schema)
    }

    fn check_consistency(&self) -> Result<(), PackageError> {
        let fail = |what: String| Err(PackageError::ManifestInconsistent(what));
        if !is_valid_name(&self.detector) || !is_valid_name(&self.version) {
            return fail(
                "detector and version must be 1–64 characters of A–Z a–z 0–9 . _ -".into(),
            );
        }
        if let Err(what) = self.schema.validate() {
            return fail(what);
        }
        if let Err(what) = self.normalisation.validate(self.schema.n_features()) {
            return fail(what);
        }
        if !self.threshold.value.is_finite() {
            return fail("the threshold must be finite".into());
        }
        if self.weights.file != WEIGHTS_FILE {
            return fail(format!("weights must be in {WEIGHTS_FILE}"));
        }
        let golden = &self.golden;
        if golden.rows.is_empty() {
            return fail("the golden check needs at least one row".into());
        }
        if !(golden.tolerance.is_finite() && golden.tolerance > 0.0 && golden.tolerance <= 1e-2) {
            return fail("the golden tolerance must be in (0, 0.01]".into());
        }
        let width = self.schema.input_width();
        for row in &golden.rows {
            if row.input.len() != width || row.input.iter().any(|x| !x.is_finite()) {
                return fail(format!("golden inputs must be {width} finite values"));
            }
            if !row.score.is_finite() {
                return fail("golden scores must be finite".into());
            }
        }
        Ok(())
    }
}

/// A package that passed every check: the only kind of model Vigil serves.
#[derive(Debug)]
pub struct LoadedPackage {
    manifest: Manifest,
    manifest_digest: Digest,
    scorer: Scorer,
    signature: SignatureState,
}

impl LoadedPackage {
    /// Reads and verifies the package in `dir` under the default policy (signatures not
    /// required; one that is present must verify).
    pub fn load(dir: &Path) -> Result<LoadedPackage, PackageError> {
        LoadedPackage::load_with(dir, &TrustPolicy::default())
    }

    /// Reads and verifies the package in `dir` (with `manifest.sig` if present) under `policy`.
    pub fn load_with(dir: &Path, policy: &TrustPolicy) -> Result<LoadedPackage, PackageError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| PackageError::Io { path, source })
        };
        let manifest_path = dir.join(MANIFEST_FILE);
        let size = std::fs::metadata(&manifest_path)
            .map_err(|source| PackageError::Io {
                path: manifest_path,
                source,
            })?
            .len();
        if size > MAX_MANIFEST_BYTES {
            return Err(PackageError::ManifestTooLarge {
                size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let manifest = read(MANIFEST_FILE)?;
        let weights = read(WEIGHTS_FILE)?;
        let signature = match std::fs::read(dir.join(SIGNATURE_FILE)) {
            Ok(bytes) => Some(bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(PackageError::Io {
                    path: dir.join(SIGNATURE_FILE),
                    source,
                })
            }
        };
        LoadedPackage::verify_with(&manifest, &weights, signature.as_deref(), policy)
    }

    /// Verifies an unsigned package from the bytes of its two files.
    pub fn verify(manifest_bytes: &[u8], weights: &[u8]) -> Result<LoadedPackage, PackageError> {
        LoadedPackage::verify_with(manifest_bytes, weights, None, &TrustPolicy::default())
    }

    /// Verifies a package from its bytes: the manifest, the signature under `policy`, the
    /// weights' digest, every tensor, and the golden rows, in that order.
    pub fn verify_with(
        manifest_bytes: &[u8],
        weights: &[u8],
        signature: Option<&[u8]>,
        policy: &TrustPolicy,
    ) -> Result<LoadedPackage, PackageError> {
        if manifest_bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(PackageError::ManifestTooLarge {
                size: manifest_bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let manifest = Manifest::parse(manifest_bytes)?;
        let signature = policy.check(manifest_bytes, signature)?;
        manifest.check_consistency()?;
        let actual = Digest::of(weights);
        if actual != manifest.weights.blake3 {
            return Err(PackageError::DigestMismatch {
                expected: manifest.weights.blake3.to_hex(),
                actual: actual.to_hex(),
            });
        }
        let scorer = build_scorer(&manifest, weights)?;
        let package = LoadedPackage {
            manifest_digest: Digest::of(manifest_bytes),
            manifest,
            scorer,
            signature,
        };
        package.check_golden()?;
        Ok(package)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The blake3 of the exact manifest bytes: identifies the package.
    pub fn manifest_digest(&self) -> Digest {
        self.manifest_digest
    }

    /// What the signature check found.
    pub fn signature(&self) -> &SignatureState {
        &self.signature
    }

    /// The version string.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Scores raw rows (`window × n_features` values each, before normalisation).
    pub fn score_raw(&self, raw: &[f32]) -> Result<Scores, ModelError> {
        let mut rows = raw.to_vec();
        self.manifest.normalisation.apply(&mut rows);
        self.score_normalised(&rows)
    }

    /// Scores rows already normalised (by the package's normalisation, or by one that follows
    /// where a stream's normal is now).
    pub fn score_normalised(&self, rows: &[f32]) -> Result<Scores, ModelError> {
        self.scorer.score(rows)
    }

    fn check_golden(&self) -> Result<(), PackageError> {
        let golden = &self.manifest.golden;
        let raw: Vec<f32> = golden
            .rows
            .iter()
            .flat_map(|r| r.input.iter().copied())
            .collect();
        let scores = self.score_raw(&raw)?;
        for (row, (expected, got)) in golden
            .rows
            .iter()
            .map(|r| r.score)
            .zip(scores.scores)
            .enumerate()
        {
            let allowed = golden.tolerance * expected.abs().max(1.0);
            if !got.is_finite() || (got - expected).abs() > allowed {
                return Err(PackageError::GoldenMismatch { row, expected, got });
            }
        }
        Ok(())
    }
}

/// Checks every tensor against the architecture, then builds the model from the same bytes.
fn build_scorer(manifest: &Manifest, weights: &[u8]) -> Result<Scorer, PackageError> {
    let tensors = SafeTensors::deserialize(weights).map_err(PackageError::WeightsInvalid)?;
    let architecture = manifest.architecture();
    architecture.validate()?;
    let expected = architecture.tensor_shapes();
    for name in tensors.names() {
        if !expected.iter().any(|(n, _)| n == name) {
            return Err(PackageError::UnexpectedTensor {
                name: name.to_owned(),
                architecture: manifest.model.kind().to_owned(),
            });
        }
    }
    let mut built = HashMap::with_capacity(expected.len());
    for (name, shape) in expected {
        let view = tensors
            .tensor(&name)
            .map_err(|_| PackageError::TensorMissing { name: name.clone() })?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(PackageError::TensorDtype {
                name,
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape.as_slice() {
            return Err(PackageError::TensorShape {
                name,
                expected: shape,
                found: view.shape().to_vec(),
            });
        }
        let finite = view
            .data()
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
        if !finite {
            return Err(PackageError::NonFinite { name });
        }
        let tensor = Tensor::from_raw_buffer(view.data(), DType::F32, &shape, &Device::Cpu)
            .map_err(ModelError::from)?;
        built.insert(name, tensor);
    }
    let vb = VarBuilder::from_tensors(built, DType::F32, &Device::Cpu);
    Ok(architecture.build(vb)?.scorer()?)
}

/// Serialises named tensors (a trained `VarMap`, say) to safetensors bytes.
pub fn weights_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>, ModelError> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize(sorted, None)
        .map_err(|err| ModelError::Tensor(candle_core::Error::Msg(err.to_string())))
}

/// Serialises the weights held by a `VarMap` (what training produces).
pub fn varmap_weights(varmap: &candle_nn::VarMap) -> Result<Vec<u8>, ModelError> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::Config("the VarMap lock is poisoned"))?;
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    weights_bytes(&tensors)
}

/// Everything a package says besides its weights; [`PackageBuilder::build`] adds the digest
/// and the golden check, then verifies the result exactly as a loader would.
#[derive(Debug, Clone)]
pub struct PackageBuilder {
    pub detector: String,
    pub version: String,
    pub parent: Option<String>,
    pub model: ModelSpec,
    pub schema: FeatureSchema,
    pub normalisation: Normalisation,
    pub threshold: Threshold,
    pub training: serde_json::Value,
    pub evaluation: serde_json::Value,
}

/// Golden tolerance written by the builder: relative to `max(1, |score|)`.
const GOLDEN_TOLERANCE: f32 = 1e-4;

/// A package built in memory: the manifest bytes and the weights bytes, already verified.
#[derive(Debug)]
pub struct BuiltPackage {
    pub manifest: Vec<u8>,
    pub weights: Vec<u8>,
    pub loaded: LoadedPackage,
}

impl PackageBuilder {
    /// A builder for weights made elsewhere: identity normalisation, a fixed threshold, no
    /// parent and no training or evaluation record.
    pub fn fixed(
        detector: &str,
        version: &str,
        schema: FeatureSchema,
        model: ModelSpec,
        threshold: f32,
    ) -> PackageBuilder {
        PackageBuilder {
            detector: detector.into(),
            version: version.into(),
            parent: None,
            model,
            normalisation: crate::Normalisation::identity(schema.n_features()),
            schema,
            threshold: Threshold {
                value: threshold,
                method: "fixed".into(),
                parameters: Default::default(),
            },
            training: serde_json::Value::Null,
            evaluation: serde_json::Value::Null,
        }
    }

    /// A version string from the current UTC time, sortable: `20261128T021200Z`.
    pub fn timestamp_version() -> String {
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
    }

    /// Computes the digest and golden rows, writes the manifest, and verifies the package.
    pub fn build(self, weights: Vec<u8>) -> Result<BuiltPackage, PackageError> {
        self.schema
            .validate()
            .map_err(PackageError::ManifestInconsistent)?;
        self.normalisation
            .validate(self.schema.n_features())
            .map_err(PackageError::ManifestInconsistent)?;
        let width = self.schema.input_width();
        let golden_rows = golden_inputs(&windowed(&self.normalisation, self.schema.window), width);
        let mut manifest = Manifest {
            format_version: FORMAT_VERSION,
            detector: self.detector,
            version: self.version,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            parent: self.parent,
            model: self.model,
            normalisation: self.normalisation,
            threshold: self.threshold,
            training: self.training,
            evaluation: self.evaluation,
            golden: GoldenCheck {
                tolerance: GOLDEN_TOLERANCE,
                rows: golden_rows,
            },
            schema: self.schema,
            weights: WeightsRef {
                file: WEIGHTS_FILE.to_owned(),
                blake3: Digest::of(&weights),
                bytes: weights.len() as u64,
            },
        };
        // Score the golden inputs with the model built exactly as a loader builds it.
        manifest.check_consistency_without_golden()?;
        let scorer = build_scorer(&manifest, &weights)?;
        let probe = LoadedPackage {
            manifest: manifest.clone(),
            manifest_digest: Digest::of(b""),
            scorer,
            signature: SignatureState::Unsigned,
        };
        let raw: Vec<f32> = manifest
            .golden
            .rows
            .iter()
            .flat_map(|r| r.input.clone())
            .collect();
        let scores = probe.score_raw(&raw)?;
        for (row, score) in manifest.golden.rows.iter_mut().zip(scores.scores) {
            row.score = score;
        }
        let mut manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(PackageError::ManifestInvalid)?;
        manifest_bytes.push(b'\n');
        let loaded = LoadedPackage::verify(&manifest_bytes, &weights)?;
        Ok(BuiltPackage {
            manifest: manifest_bytes,
            weights,
            loaded,
        })
    }
}

/// Centre and scale repeated for every reading of a window.
fn windowed(normalisation: &Normalisation, window: usize) -> (Vec<f32>, Vec<f32>) {
    let repeat = |v: &[f32]| -> Vec<f32> { (0..window).flat_map(|_| v.iter().copied()).collect() };
    (repeat(&normalisation.centre), repeat(&normalisation.scale))
}

impl Manifest {
    fn check_consistency_without_golden(&self) -> Result<(), PackageError> {
        let mut probe = self.clone();
        for row in &mut probe.golden.rows {
            row.score = 0.0;
        }
        probe.check_consistency()
    }
}

/// Deterministic probe inputs around the normalisation centre: the centre, ±1 scale, and two
/// pseudo-random rows within ±2 scales.
fn golden_inputs((centre, scale): &(Vec<f32>, Vec<f32>), width: usize) -> Vec<GoldenRow> {
    let mut rng = crate::rng::XorShift::new(0x9E37_79B9_7F4A_7C15);
    let mut next = move || rng.next_unit() * 4.0 - 2.0;
    let mut rows: Vec<GoldenRow> = [0.0f32, 1.0, -1.0]
        .iter()
        .map(|offset| GoldenRow {
            input: (0..width).map(|i| centre[i] + offset * scale[i]).collect(),
            score: 0.0,
        })
        .collect();
    for _ in 0..2 {
        rows.push(GoldenRow {
            input: (0..width).map(|i| centre[i] + next() * scale[i]).collect(),
            score: 0.0,
        });
    }
    rows
}

/// Writes a package directory: weights, then manifest, each fsynced, then the directory.
pub fn write_dir(dir: &Path, manifest: &[u8], weights: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in [(WEIGHTS_FILE, weights), (MANIFEST_FILE, manifest)] {
        let mut file = std::fs::File::create(dir.join(name))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// A verified package of `model` with seeded random weights (PyTorch-style initialisation),
/// identity normalisation and a fixed threshold: for benchmarks and tests that need a real
/// package of a given shape, not a trained one.
pub fn seeded(
    detector: &str,
    version: &str,
    schema: FeatureSchema,
    model: ModelSpec,
    threshold: f32,
    seed: u64,
) -> Result<BuiltPackage, PackageError> {
    let (varmap, _) = crate::Architecture::from_spec(&model, &schema).initialised(seed)?;
    let weights = varmap_weights(&varmap)?;
    PackageBuilder::fixed(detector, version, schema, model, threshold).build(weights)
}

/// A package as the tar archive `PUT /v1/detectors/{name}/versions` takes: the manifest and
/// the weights in one directory.
pub fn archive(manifest: &[u8], weights: &[u8]) -> Vec<u8> {
    archive_files(&[(MANIFEST_FILE, manifest), (WEIGHTS_FILE, weights)])
}

/// The package directory `dir` as an upload archive: its manifest, weights and signature
/// (if it is signed), nothing else.
pub fn archive_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let manifest = std::fs::read(dir.join(MANIFEST_FILE))?;
    let weights = std::fs::read(dir.join(WEIGHTS_FILE))?;
    let signature = match std::fs::read(dir.join(SIGNATURE_FILE)) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let mut files = vec![(MANIFEST_FILE, &manifest[..]), (WEIGHTS_FILE, &weights[..])];
    if let Some(signature) = &signature {
        files.push((SIGNATURE_FILE, signature));
    }
    Ok(archive_files(&files))
}

fn archive_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("pkg/{name}"), *bytes)
            .expect("writing to memory cannot fail");
    }
    builder.into_inner().expect("writing to memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_model(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/peers/model")
            .join(file)
    }

    fn ae_ref_builder() -> PackageBuilder {
        PackageBuilder::fixed(
            "ae-ref",
            "v1",
            FeatureSchema::new((0..32).map(|i| format!("f{i}")), 1),
            ModelSpec::DenseAutoencoder {
                hidden: vec![64, 16, 64],
            },
            1.0,
        )
    }

    fn ae_ref_package() -> BuiltPackage {
        let weights = std::fs::read(shared_model("ae_ref.safetensors")).unwrap();
        ae_ref_builder().build(weights).unwrap()
    }

    #[test]
    fn ae_ref_reproduces_the_pytorch_scores() {
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(shared_model("ref_scores.json")).unwrap())
                .unwrap();
        let inputs: Vec<Vec<f32>> = serde_json::from_value(reference["inputs"].clone()).unwrap();
        let expected: Vec<f32> = serde_json::from_value(reference["scores"].clone()).unwrap();
        let package = ae_ref_package().loaded;
        // One row at a time (the fast path) and all rows repeated into a big batch (candle).
        for (row, want) in inputs.iter().zip(&expected) {
            let got = package.score_raw(row).unwrap().scores[0];
            assert!((got - want).abs() <= 1e-5, "fast path: {got} vs {want}");
        }
        let big: Vec<f32> = (0..16)
            .flat_map(|_| inputs.iter().flatten().copied())
            .collect();
        let scores = package.score_raw(&big).unwrap().scores;
        for (got, want) in scores.iter().zip(expected.iter().cycle()) {
            assert!((got - want).abs() <= 1e-5, "candle path: {got} vs {want}");
        }
    }

    fn reason_of(manifest: &[u8], weights: &[u8]) -> &'static str {
        LoadedPackage::verify(manifest, weights)
            .unwrap_err()
            .reason()
    }

    fn edit_manifest(package: &BuiltPackage, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(&package.manifest).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_built_package_verifies_from_disk() {
        let package = ae_ref_package();
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &package.manifest, &package.weights).unwrap();
        let loaded = LoadedPackage::load(dir.path()).unwrap();
        assert_eq!(loaded.manifest().id(), "ae-ref@v1");
        assert_eq!(loaded.manifest_digest(), Digest::of(&package.manifest));
    }

    #[test]
    fn a_directory_packs_with_its_signature_and_nothing_else() {
        let package = ae_ref_package();
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &package.manifest, &package.weights).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not part of a package").unwrap();
        let names = |bytes: Vec<u8>| -> Vec<String> {
            tar::Archive::new(&bytes[..])
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            names(archive_dir(dir.path()).unwrap()),
            ["pkg/manifest.json", "pkg/weights.safetensors"]
        );
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        crate::signature::sign_dir(dir.path(), &key).unwrap();
        assert_eq!(
            names(archive_dir(dir.path()).unwrap()),
            [
                "pkg/manifest.json",
                "pkg/weights.safetensors",
                "pkg/manifest.sig"
            ]
        );
    }

    #[test]
    fn a_flipped_weight_byte_fails_the_digest() {
        let package = ae_ref_package();
        let mut weights = package.weights.clone();
        let last = weights.len() - 1;
        weights[last] ^= 0x01;
        assert_eq!(reason_of(&package.manifest, &weights), "digest_mismatch");
    }

    #[test]
    fn an_unknown_format_version_is_refused_as_such() {
        let package = ae_ref_package();
        let manifest = edit_manifest(&package, |m| m["format_version"] = 2.into());
        assert_eq!(
            reason_of(&manifest, &package.weights),
            "unsupported_format_version"
        );
    }

    #[test]
    fn garbage_manifest_is_invalid() {
        assert_eq!(reason_of(b"{not json", b""), "manifest_invalid");
    }

    #[test]
    fn a_golden_score_that_does_not_reproduce_is_refused() {
        let package = ae_ref_package();
        let manifest = edit_manifest(&package, |m| {
            let score = m["golden"]["rows"][1]["score"].as_f64().unwrap();
            m["golden"]["rows"][1]["score"] = (score * 1.01 + 0.01).into();
        });
        assert_eq!(reason_of(&manifest, &package.weights), "golden_mismatch");
    }

    /// Rebuilds the package's weights with one tensor replaced, and a manifest that vouches
    /// for them, so that only the tensor check can catch the problem.
    fn with_tensor(name: &str, tensor: Tensor, drop: bool) -> (Vec<u8>, Vec<u8>) {
        let original = std::fs::read(shared_model("ae_ref.safetensors")).unwrap();
        let mut tensors = candle_core::safetensors::load_buffer(&original, &Device::Cpu).unwrap();
        if drop {
            tensors.remove(name);
        } else {
            tensors.insert(name.to_owned(), tensor);
        }
        let weights = weights_bytes(&tensors).unwrap();
        let package = ae_ref_package();
        let manifest = edit_manifest(&package, |m| {
            m["weights"]["blake3"] = Digest::of(&weights).to_hex().into();
            m["weights"]["bytes"] = weights.len().into();
        });
        (manifest, weights)
    }

    #[test]
    fn wrong_shapes_missing_tensors_and_nan_weights_have_distinct_reasons() {
        let cpu = Device::Cpu;
        let (m, w) = with_tensor(
            "l2.bias",
            Tensor::zeros(17, DType::F32, &cpu).unwrap(),
            false,
        );
        assert_eq!(reason_of(&m, &w), "tensor_shape");
        let (m, w) = with_tensor(
            "l2.bias",
            Tensor::zeros(16, DType::F32, &cpu).unwrap(),
            true,
        );
        assert_eq!(reason_of(&m, &w), "tensor_missing");
        let nan = Tensor::new(&[f32::NAN; 16], &cpu).unwrap();
        let (m, w) = with_tensor("l2.bias", nan, false);
        assert_eq!(reason_of(&m, &w), "non_finite_weights");
        let (m, w) = with_tensor(
            "l9.bias",
            Tensor::zeros(3, DType::F32, &cpu).unwrap(),
            false,
        );
        assert_eq!(reason_of(&m, &w), "unexpected_tensor");
        let doubles = Tensor::zeros(16, DType::F64, &cpu).unwrap();
        let (m, w) = with_tensor("l2.bias", doubles, false);
        assert_eq!(reason_of(&m, &w), "tensor_dtype");
    }

    #[test]
    fn truncated_weights_are_invalid() {
        let package = ae_ref_package();
        let weights = &package.weights[..package.weights.len() / 2];
        let manifest = edit_manifest(&package, |m| {
            m["weights"]["blake3"] = Digest::of(weights).to_hex().into();
        });
        assert_eq!(reason_of(&manifest, weights), "weights_invalid");
    }

    #[test]
    fn inconsistent_normalisation_is_refused_before_building() {
        let mut builder = ae_ref_builder();
        builder.normalisation.scale[3] = 0.0;
        let weights = std::fs::read(shared_model("ae_ref.safetensors")).unwrap();
        assert_eq!(
            builder.build(weights).unwrap_err().reason(),
            "manifest_inconsistent"
        );
    }
}

//! Criterion micro-benchmarks of the scoring path's parts: request parsing (the server's own
//! parser), the ae-ref forward
//! pass and score at several batch sizes (the fused kernel that serves, and candle's layers
//! beside it; `benches/onnxruntime_forward.py` gives onnxruntime's figure on the same rows), the statistical
//! detectors (robust z, a step of the adaptive one, a step of the sequence one), what following
//! the stream's normal adds to a package's reading, and a group-committed log write.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vigil_datasets::{Durability, NewObservation, ObservationLog};
use vigil_models::{LoadedPackage, RobustZ};

fn ae_ref() -> LoadedPackage {
    let tar = benches::ae_ref_tar();
    let mut archive = tar::Archive::new(tar.as_slice());
    let dir = tempfile::tempdir().unwrap();
    archive.unpack(dir.path()).unwrap();
    LoadedPackage::load(&dir.path().join("pkg")).unwrap()
}

fn forward_and_score(c: &mut Criterion) {
    // As `vigil` does at start-up: candle on one thread (see ARCHITECTURE.md). Criterion runs
    // benchmarks on this one thread, so nothing reads the environment concurrently.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let package = ae_ref();
    let mut group = c.benchmark_group("ae_ref_forward_score");
    for batch in [1usize, 8, 64, 4096] {
        let rows: Vec<f32> = (0..batch * 32)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &rows, |b, rows| {
            b.iter(|| package.score_raw(rows).unwrap())
        });
    }
    group.finish();

    // The same rows through candle's layers (the trainer's path, one thread): the fused
    // kernel's ratio to it, in the same run.
    let weights =
        std::fs::read(benches::shared_dir().join("peers/model/ae_ref.safetensors")).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(
        weights,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let config = vigil_models::DenseConfig {
        input_dim: 32,
        hidden: vec![64, 16, 64],
    };
    let model = vigil_models::DenseAutoencoder::new(&config, vb).unwrap();
    let mut group = c.benchmark_group("ae_ref_candle_score");
    for batch in [64usize, 4096] {
        let rows: Vec<f32> = (0..batch * 32)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &rows, |b, rows| {
            b.iter(|| {
                let xs =
                    candle_core::Tensor::from_slice(rows, (batch, 32), &candle_core::Device::Cpu)
                        .unwrap();
                model.score_tensor(&xs).unwrap().to_vec1::<f32>().unwrap()
            })
        });
    }
    group.finish();
}

fn parse_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_score_request");
    for n in [1usize, 64] {
        let body = benches::score_body(n, 3);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.iter(|| {
                vigil_inference::api::parse_json::<vigil_inference::api::ScoreRequest>(body)
                    .unwrap()
            })
        });
    }
    group.finish();
    // The same observations in CBOR (features as 4-byte floats), as a device app sends them.
    let mut group = c.benchmark_group("parse_score_request_cbor");
    for n in [1usize, 64] {
        let body = vigil_cli::loadgen::cbor_of(&benches::score_body(n, 3)).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.iter(|| {
                vigil_inference::api::parse_cbor::<vigil_inference::api::ScoreRequest>(body)
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// The stages of a 64-observation request after parsing, per request: validation against the
/// schema (parse + validate, to set beside `parse_score_request/64`), and the detector's
/// scoring of the readings (ae-ref served as a package, which follows the stream's normal
/// through its adaptive detector by default; ids allocated, windows advanced, contributions).
/// `repeated` sends one body again and again, as `vigil bench` does over HTTP (a repeated
/// reading is a stuck sensor, so the stream sits in alarm); `varying` cycles through 100
/// bodies of the same distribution.
fn request_stages(c: &mut Criterion) {
    use std::sync::Arc;
    use vigil_inference::api::{parse_score_body, Format};
    use vigil_inference::detector::{Detector, DetectorSpec, Serving};
    let features = benches::ae_ref_features();
    let spec: DetectorSpec = serde_json::from_value(serde_json::json!({
        "name": "ae", "features": features, "window": 1
    }))
    .unwrap();
    let bodies: Vec<Vec<u8>> = (0..100).map(|seed| benches::score_body(64, seed)).collect();
    let mut group = c.benchmark_group("score_request_64");
    group.throughput(Throughput::Elements(64));
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| parse_score_body(&bodies[0], Format::Json, &spec.schema, 1024).unwrap())
    });
    let readings: Vec<_> = bodies
        .iter()
        .map(|body| parse_score_body(body, Format::Json, &spec.schema, 1024).unwrap())
        .collect();
    for (name, cycle) in [("detector_repeated", 1usize), ("detector_varying", 100)] {
        let package = Arc::new(ae_ref());
        let serving = Serving::Package(package.clone());
        let detector = Detector::new(spec.clone(), Serving::Package(package));
        let mut next_id = 1i64;
        let mut k = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % cycle;
                detector
                    .score(&serving, &readings[k], |n| {
                        next_id += n as i64;
                        next_id - n as i64
                    })
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn statistical(c: &mut Criterion) {
    let mut detector = RobustZ::new(32, 1000, 30);
    for i in 0..1000 {
        let reading: Vec<f32> = (0..32)
            .map(|f| ((i * 31 + f * 17) % 100) as f32 / 10.0)
            .collect();
        detector.learn(&reading);
    }
    let baseline = detector.baseline().unwrap().clone();
    let reading: Vec<f32> = (0..32).map(|f| f as f32 / 4.0).collect();
    c.bench_function("statistical_score_1", |b| {
        b.iter(|| baseline.score(&reading))
    });
}

/// One reading through the adaptive detector (the statistical detector a stream gets until it
/// has a model): window statistics, score, debounce, and every 50th reading a refit (with a
/// re-estimate of the spread once 800 windows have been learnt).
fn adaptive(c: &mut Criterion) {
    use vigil_trainer::online::{AdaptiveDetector, AdaptiveOptions, StreamDetector};
    let rows: Vec<f32> = (0..400 * 8)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 + (i % 8) as f32)
        .collect();
    let mut detector = AdaptiveDetector::fit(&rows, 8, &AdaptiveOptions::default()).unwrap();
    let mut k = 0usize;
    c.bench_function("adaptive_step_8_sensors", |b| {
        b.iter(|| {
            k = (k + 1) % 400;
            detector.step(&rows[k * 8..(k + 1) * 8])
        })
    });
}

/// What following adds to a package's reading (`follow_normal`, the default for several
/// sensors): a step of the stream's adaptive detector over ae-ref's 32 features and the
/// reading normalised through it — to set beside `ae_ref_forward_score/1`.
fn follow(c: &mut Criterion) {
    use vigil_trainer::online::{AdaptiveDetector, AdaptiveOptions, StreamDetector};
    let package = ae_ref();
    let own = package.manifest().normalisation.clone();
    let rows: Vec<f32> = (0..400 * 32)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 + (i % 32) as f32)
        .collect();
    let mut detector = AdaptiveDetector::fit(&rows, 32, &AdaptiveOptions::default()).unwrap();
    let mut out = Vec::with_capacity(32);
    let mut k = 0usize;
    c.bench_function("follow_step_32_sensors", |b| {
        b.iter(|| {
            k = (k + 1) % 400;
            let reading = &rows[k * 32..(k + 1) * 32];
            detector.step(reading);
            out.clear();
            detector.follow(&own, reading, &mut out);
            out[0]
        })
    });
}

/// One reading through the sequence detector (single-sensor streams): quantise at three
/// scales, look up and store six sequences, update the novelty sums and their history, judge.
/// Fed a noisy daily rhythm, so that the memory keeps turning over as it does in service.
fn sequence(c: &mut Criterion) {
    use vigil_trainer::online::StreamDetector;
    use vigil_trainer::sequence::{SequenceDetector, SequenceOptions};
    let rows: Vec<f32> = (0..20_000)
        .map(|i| {
            let phase = std::f32::consts::TAU * (i % 288) as f32 / 288.0;
            10.0 + 5.0 * phase.sin() + ((i * 7919) % 1000) as f32 / 400.0
        })
        .collect();
    let mut detector = SequenceDetector::fit(&rows[..750], 1, &SequenceOptions::default()).unwrap();
    let mut k = 0usize;
    c.bench_function("sequence_step", |b| {
        b.iter(|| {
            k = (k + 1) % rows.len();
            detector.step(&rows[k..k + 1])
        })
    });
}

fn log_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
    let mut next_id = 1i64;
    let mut group = c.benchmark_group("log_commit");
    for n in [1usize, 32, 256] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let rows: Vec<NewObservation> = (0..n)
                    .map(|k| NewObservation {
                        id: next_id + k as i64,
                        detector: "ae-ref".into(),
                        stream: "s1".into(),
                        ts: None,
                        received_at: 1.0,
                        features: vec![0.5; 32],
                        score: Some(0.1),
                        threshold: Some(1.0),
                        anomaly: Some(false),
                        alarm: Some(false),
                        changepoint: Some(false),
                        model_version: "v1".into(),
                    })
                    .collect();
                next_id += n as i64;
                log.append(&rows).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    forward_and_score,
    parse_request,
    request_stages,
    adaptive,
    follow,
    sequence,
    statistical,
    log_write
);
criterion_main!(benches);

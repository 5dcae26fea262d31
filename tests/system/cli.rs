//! The command line: `vigil package` turns PyTorch weights into a package that `vigil verify`
//! accepts and the server scores exactly as PyTorch did; a tampered one fails `verify`.

use std::path::Path;

use serde_json::{json, Value};
use system_tests::{run_vigil as vigil, TestServer};

fn shared(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peers/model")
        .join(file)
}

#[test]
fn ae_ref_packaged_from_pytorch_weights_verifies_and_serves_the_pytorch_scores() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ae-ref-v1");
    let features: Vec<String> = (0..32).map(|i| format!("f{i}")).collect();
    let (ok, text) = vigil(&[
        "package",
        "--weights",
        shared("ae_ref.safetensors").to_str().unwrap(),
        "--features",
        &features.join(","),
        "--detector",
        "ae-ref",
        "--version",
        "v1",
        "--threshold",
        "1.0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = vigil(&["verify", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("verified ae-ref@v1"), "{text}");

    // Serve it and score the PyTorch reference inputs.
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let names: Vec<&str> = features.iter().map(String::as_str).collect();
    server.create_detector("ae-ref", &names, 1);
    let tar = {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all("ae-ref-v1", &out).unwrap();
        builder.into_inner().unwrap()
    };
    let answer = server.upload("ae-ref", &tar);
    assert_eq!(answer.status, 201, "{answer:?}");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(shared("ref_scores.json")).unwrap()).unwrap();
    let observations: Vec<Value> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| json!({ "features": input }))
        .collect();
    let answer = server.post(
        "/v1/detectors/ae-ref/score",
        &json!({ "observations": observations }),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    for (result, want) in answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["scores"].as_array().unwrap())
    {
        let (got, want) = (result["score"].as_f64().unwrap(), want.as_f64().unwrap());
        assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
    }

    // Tamper with the weights on disk: verify names the failed check and exits non-zero.
    let weights = out.join("weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let (ok, text) = vigil(&["verify", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("refused digest_mismatch"), "{text}");
}

#[test]
fn package_refuses_weights_that_do_not_fit_the_features() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = vigil(&[
        "package",
        "--weights",
        shared("ae_ref.safetensors").to_str().unwrap(),
        "--features",
        "a,b,c",
        "--detector",
        "x",
        "--threshold",
        "1",
        "--out",
        dir.path().join("p").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("the weights take 32 inputs"), "{text}");
}

fn skab(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/skab")
        .join(relative)
}

#[test]
fn a_trained_package_verifies_serves_and_scores_as_the_trainer_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pump-v1");
    let data = skab("valve1/0.csv");
    let ops = dir.path().join("ops");
    assert!(vigil(&["keygen", "--out", ops.to_str().unwrap()]).0);
    let (ok, text) = vigil(&[
        "train",
        "--sign-key",
        ops.with_extension("key").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--format",
        "skab",
        "--rows",
        "400",
        "--detector",
        "pump",
        "--version",
        "v1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("wrote pump@v1"), "{text}");
    let (ok, text) = vigil(&[
        "verify",
        out.to_str().unwrap(),
        "--trusted-key",
        ops.with_extension("pub").to_str().unwrap(),
        "--require-signature",
    ]);
    assert!(ok && text.contains("verified pump@v1"), "{text}");
    assert!(text.contains("signed by trusted key"), "{text}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["training"]["provenance"]["format"], "skab");
    assert_eq!(manifest["threshold"]["method"], "pot");
    let recorded_p99 = manifest["evaluation"]["calibration_score_p99"]
        .as_f64()
        .unwrap();
    let validation = manifest["training"]["validation_windows"].as_u64().unwrap() as usize;
    assert_eq!(validation, 80, "the last 20 % of 400 readings validate");

    // Serve it; score the validation readings (rows 320..400) through HTTP.
    let server = TestServer::start(&dir.path().join("data"));
    let table = vigil_datasets::skab::read_skab(&data).unwrap();
    let names: Vec<&str> = table.features.iter().map(String::as_str).collect();
    server.create_detector("pump", &names, 1);
    let tar = {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all("pump-v1", &out).unwrap();
        builder.into_inner().unwrap()
    };
    let answer = server.upload("pump", &tar);
    assert_eq!(answer.status, 201, "{answer:?}");
    let observations: Vec<Value> = (320..400)
        .map(|i| json!({ "features": table.row(i) }))
        .collect();
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({ "observations": observations }),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut scores: Vec<f64> = answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["model_version"], "v1", "{r}");
            r["score"].as_f64().unwrap()
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    // Nearest-rank p99 of 80 scores is the 80th.
    let served_p99 = scores[79];
    assert!(
        (served_p99 - recorded_p99).abs() <= 1e-5 * recorded_p99.max(1.0),
        "served p99 {served_p99}, recorded {recorded_p99}"
    );
}

#[test]
fn eval_prints_the_protocol_figures_as_json_and_writes_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let predictions = dir.path().join("pred");
    let data = skab("");
    let figures = vigil_json(&[
        "eval",
        "--protocol",
        "skab",
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--predictions-out",
        predictions.to_str().unwrap(),
    ]);
    for key in [
        "f1",
        "far",
        "mar",
        "nab_standard",
        "nab_low_fp",
        "nab_low_fn",
        "missed_cps",
        "fps",
    ] {
        assert!(figures[key].is_number(), "{key} missing: {figures}");
    }
    assert_eq!(figures["files"], 20);
    for key in [
        "nab_standard",
        "nab_low_fp",
        "nab_low_fn",
        "missed_cps",
        "fps",
    ] {
        assert!(
            figures["alarm_changepoints"][key].is_number(),
            "alarm_changepoints.{key} missing: {figures}"
        );
    }
    // The NAB figures are those of the changepoints written out (scored here by the
    // project's metric code, which a unit test holds to score_skab.py's): the detector's own,
    // not the alarm's rises and falls, which give the `alarm_changepoints` figures.
    let (ours, alarms) = rescore_predictions(&predictions, &data);
    assert_eq!(figures["nab_standard"], ours.nab_standard, "{figures}");
    assert_eq!(figures["fps"], ours.fps, "{figures}");
    assert_eq!(
        figures["alarm_changepoints"]["nab_standard"], alarms.nab_standard,
        "{figures}"
    );
    assert_ne!(ours.fps, alarms.fps, "{figures}");
    // One prediction file per data file, scored rows only, in score_skab.py's columns.
    let written = std::fs::read_to_string(predictions.join("valve1/0.csv")).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("datetime,anomaly,changepoint,score"));
    let table = vigil_datasets::skab::read_skab(&skab("valve1/0.csv")).unwrap();
    assert_eq!(lines.clone().count(), table.n_rows() - 400);
    // The first scored row is the data file's row 400 (line 402, after the header).
    let source = std::fs::read_to_string(skab("valve1/0.csv")).unwrap();
    let first_scored = source.lines().nth(401).unwrap().split(';').next().unwrap();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with(&format!("{first_scored},")),
        "{first} vs {first_scored}"
    );

    // The position check reports how far the figures moved.
    let check = vigil_json(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--position-check",
        "3",
        "--json",
    ]);
    assert!(check["rows_removed"].as_u64().unwrap() > 0, "{check}");
    assert!(check["moved"]["f1"].is_number(), "{check}");
    assert!(check["baseline"]["f1"] == figures["f1"], "{check}");

    // The long run on the anomaly-free recording: FAR and episodes.
    let long = vigil_json(&[
        "eval",
        "--protocol",
        "long-run",
        "--data",
        skab("anomaly-free/anomaly-free-part1.csv")
            .to_str()
            .unwrap(),
        "--json",
    ]);
    assert!(
        long["far"].is_number() && long["episodes"].is_number(),
        "{long}"
    );
    assert_eq!(long["rows"], 4300);

    // NAB series with their labelled windows.
    let nab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
    let figures = vigil_json(&[
        "eval",
        "--protocol",
        "nab",
        "--data",
        nab.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(figures["series"], 2, "{figures}");
    assert_eq!(figures["windows"], 3, "{figures}");
    assert!(figures["f1"].is_number() && figures["nab_standard"].is_number());
}

/// Scores the prediction files under `predictions` against the labels under `data`: NAB with
/// their `changepoint` column, and with changepoints derived from their `anomaly` column.
fn rescore_predictions(
    predictions: &Path,
    data: &Path,
) -> (
    vigil_datasets::metrics::SkabReport,
    vigil_datasets::metrics::SkabReport,
) {
    use vigil_datasets::metrics::{derive_changepoints, score_skab, ScoredFile};
    struct Columns {
        times: Vec<i64>,
        anomaly: Vec<u8>,
        changepoint: Vec<u8>,
        predicted: Vec<u8>,
        written: Vec<u8>,
        derived: Vec<u8>,
    }
    let files: Vec<Columns> = vigil_datasets::skab::labelled_files(data)
        .unwrap()
        .into_iter()
        .map(|relative| {
            let table = vigil_datasets::skab::read_skab(&data.join(&relative)).unwrap();
            let text = std::fs::read_to_string(predictions.join(&relative)).unwrap();
            let (predicted, written): (Vec<u8>, Vec<u8>) = text
                .lines()
                .skip(1)
                .map(|line| {
                    let cells: Vec<&str> = line.split(',').collect();
                    (
                        cells[1].parse::<u8>().unwrap(),
                        cells[2].parse::<u8>().unwrap(),
                    )
                })
                .unzip();
            let scored = 400..table.n_rows();
            assert_eq!(predicted.len(), scored.len(), "{}", relative.display());
            Columns {
                times: table.timestamps_ns[scored.clone()].to_vec(),
                anomaly: table.anomaly.as_ref().unwrap()[scored.clone()].to_vec(),
                changepoint: table.changepoint.as_ref().unwrap()[scored].to_vec(),
                derived: derive_changepoints(&predicted),
                predicted,
                written,
            }
        })
        .collect();
    let score = |derived: bool| {
        let scored: Vec<ScoredFile<'_>> = files
            .iter()
            .map(|f| ScoredFile {
                times_ns: &f.times,
                true_anomaly: &f.anomaly,
                true_changepoint: &f.changepoint,
                predicted_anomaly: &f.predicted,
                predicted_changepoint: if derived { &f.derived } else { &f.written },
            })
            .collect();
        score_skab(&scored, 60_000_000_000)
    };
    (score(false), score(true))
}

#[test]
fn eval_and_train_refuse_bad_data_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "datetime;a;b\n2020-01-01 00:00:00;1;2\n2020-01-01 00:00:01;1\n",
    )
    .unwrap();
    let (ok, text) = vigil(&[
        "train",
        "--data",
        bad.to_str().unwrap(),
        "--format",
        "skab",
        "--detector",
        "x",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("line 3") && text.contains("fields"), "{text}");
    let (ok, text) = vigil(&["eval", "--data", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("no labelled files"), "{text}");
}

#[test]
fn a_trained_convolutional_package_serves_windows_as_it_scores_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pump-conv");
    let data = skab("valve1/1.csv");
    let (ok, text) = vigil(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "skab",
        "--rows",
        "400",
        "--model",
        "conv",
        "--window",
        "16",
        "--max-epochs",
        "10",
        "--detector",
        "pump",
        "--version",
        "c1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("conv_autoencoder pump@c1"), "{text}");
    let package = vigil_models::LoadedPackage::load(&out).unwrap();

    let server = TestServer::start(&dir.path().join("data"));
    let table = vigil_datasets::skab::read_skab(&data).unwrap();
    let names: Vec<&str> = table.features.iter().map(String::as_str).collect();
    server.create_detector("pump", &names, 16);
    let tar = {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all("pump-conv", &out).unwrap();
        builder.into_inner().unwrap()
    };
    assert_eq!(server.upload("pump", &tar).status, 201);
    // Rows 500..540 on one stream: the first 15 warm the window up, the rest are scored
    // exactly as the package scores the same 16-reading windows.
    let observations: Vec<Value> = (500..540)
        .map(|i| json!({ "stream": "rig", "features": table.row(i) }))
        .collect();
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({ "observations": observations }),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let results = answer.body["results"].as_array().unwrap();
    for (k, result) in results.iter().enumerate() {
        if k < 15 {
            assert_eq!(result["status"], "warming_up", "{result}");
            continue;
        }
        let window: Vec<f32> = (500 + k - 15..=500 + k)
            .flat_map(|i| table.row(i).iter().copied())
            .collect();
        let want = package.score_raw(&window).unwrap().scores[0] as f64;
        let got = result["score"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want.max(1.0),
            "row {k}: served {got}, package {want}"
        );
        assert_eq!(result["model_version"], "c1");
    }
}

#[test]
fn train_reads_generic_csv_and_nab_and_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    // A generic CSV: comma-separated, a `time` column, three sensors, a `fault` label.
    let csv = dir.path().join("line4.csv");
    let mut text = String::from("time,a,b,c,fault\n");
    for i in 0..600 {
        let t = i as f64 * 0.1;
        let fault = (400..450).contains(&i);
        let b = if fault {
            2.0 * t.sin() + 3.0
        } else {
            2.0 * t.sin()
        };
        text.push_str(&format!(
            "2026-01-01 00:{:02}:{:02},{:.4},{:.4},{:.4},{}\n",
            i / 60,
            i % 60,
            t.sin(),
            b,
            t.cos(),
            u8::from(fault)
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let train = |out: &str| {
        let out = dir.path().join(out);
        let (ok, text) = vigil(&[
            "train",
            "--data",
            csv.to_str().unwrap(),
            "--format",
            "csv",
            "--timestamp",
            "time",
            "--features",
            "a,b,c",
            "--label",
            "fault",
            "--detector",
            "line4",
            "--version",
            "v1",
            "--seed",
            "11",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        manifest
    };
    let first = train("one");
    let second = train("two");
    // Same data, same seed: the same weights, bit for bit.
    assert_eq!(first["weights"]["blake3"], second["weights"]["blake3"]);
    // The 50 labelled rows were held out of training and measured.
    assert_eq!(first["evaluation"]["labelled_anomalous_windows"], 50);
    let detected = first["evaluation"]["labelled_anomalous_detected"]
        .as_f64()
        .unwrap();
    // (How many depends on the tiny model; that they were scored and some flagged is the point.)
    assert!(detected > 0.0 && detected <= 1.0, "{detected}");
    assert_eq!(first["training"]["provenance"]["format"], "csv");

    // A NAB series, windows.json found above it; labelled windows are left out of training.
    let nab = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/nab/realKnownCause/ambient_temperature_system_failure.csv");
    let out = dir.path().join("temp");
    let (ok, text) = vigil(&[
        "train",
        "--data",
        nab.to_str().unwrap(),
        "--format",
        "nab",
        "--window",
        "12",
        "--max-epochs",
        "5",
        "--detector",
        "temp",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schema"]["window"], 12);
    assert!(
        manifest["evaluation"]["labelled_anomalous_windows"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn replay_plays_a_recording_through_the_server_as_eval_scores_it_and_fine_tunes_with_feedback() {
    let data = skab("valve1/0.csv");
    // Through a server it starts itself, with the dense model fitted on the first 400 rows:
    // the served alarms are the ones the eval protocol computes in process.
    let served = vigil_json(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "dense",
        "--json",
    ]);
    let evaluated = eval_one_file(&data, "dense");
    let rows = vigil_datasets::skab::read_skab(&data).unwrap().n_rows() - 400;
    assert_eq!(served["files"], 1);
    assert_eq!(served["rows"], rows);
    assert_eq!(served["training_runs"], serde_json::json!({}));
    for key in ["f1", "far", "mar", "nab_standard", "missed_cps", "fps"] {
        assert!(served["skab"][key].is_number(), "{key}: {served}");
        assert_eq!(
            served["skab"][key], evaluated[key],
            "{key}: {served} vs {evaluated}"
        );
    }

    // Fine-tuning every 300 rows, labels fed back 30 rows late: every run is recorded.
    let tuned = vigil_json(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "dense",
        "--json",
        "--train-every",
        "300",
        "--feedback-delay",
        "30",
    ]);
    let runs: u64 = tuned["training_runs"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(runs as usize, rows / 300, "{tuned}");
    assert!(
        tuned["training_runs"]["promoted"].as_u64().unwrap_or(0) >= 1,
        "{tuned}"
    );
    assert!(tuned["skab"]["f1"].is_number(), "{tuned}");
}

#[test]
fn a_served_package_follows_the_pumps_drift_as_eval_scores_it_and_on_box_runs_keep_up() {
    // The pump's anomaly-free hour, a dense package fitted on its first 400 rows and uploaded
    // (`--model dense`): its input normalisation follows the stream's adaptive detector.
    let calm = skab("anomaly-free/anomaly-free-part1.csv");
    let calm = calm.to_str().unwrap();
    let replay = |extra: &[&str]| -> Value {
        let mut args = vec!["replay", "--data", calm, "--model", "dense", "--json"];
        args.extend_from_slice(extra);
        vigil_json(&args)
    };
    let far = |v: &Value| v["long_run"]["far"].as_f64().unwrap();
    let following = replay(&[]);
    let own = replay(&["--options", r#"{"follow_normal": false}"#]);
    assert!(
        far(&following) * 10.0 < far(&own),
        "following {following}, own normalisation {own}"
    );
    // Served as `vigil eval` scores it, both ways.
    let eval = |extra: &[&str]| -> Value {
        let mut args = vec![
            "eval",
            "--protocol",
            "long-run",
            "--data",
            calm,
            "--model",
            "dense",
            "--json",
        ];
        args.extend_from_slice(extra);
        vigil_json(&args)
    };
    assert_eq!(eval(&[])["far"], following["long_run"]["far"]);
    assert_eq!(eval(&["--frozen"])["far"], own["long_run"]["far"]);
    // On-box runs every 500 readings train on the readings with the drift taken out and
    // keep the hour within the issue's goal for a package with on-box runs (5 %).
    let tuned = replay(&["--train-every", "500"]);
    assert!(
        tuned["training_runs"]["promoted"].as_u64().unwrap_or(0) >= 1,
        "{tuned}"
    );
    assert!(far(&tuned) <= 5.0, "{tuned}");
}

#[test]
fn synth_writes_labelled_machines_that_eval_scores_and_a_seed_always_writes_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let (ok, text) = vigil(&[
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--machines",
            "2",
            "--rows",
            "3000",
        ]);
        assert!(ok, "{text}");
    }
    let first = std::fs::read(a.join("machine-1.csv")).unwrap();
    assert_eq!(first, std::fs::read(b.join("machine-1.csv")).unwrap());
    assert_ne!(first, std::fs::read(a.join("machine-2.csv")).unwrap());
    // The machines drift by six noise widths: the default detector finds their faults, and a
    // package reading them through it alarms far less than one reading them in its own frame.
    let eval = |extra: &[&str]| -> Value {
        let mut args = vec!["eval", "--data", a.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        vigil_json(&args)
    };
    let default = eval(&[]);
    assert_eq!(default["files"], 2, "{default}");
    assert!(default["tp"].as_u64().unwrap() > 0, "{default}");
    let far = |v: &Value| v["far"].as_f64().unwrap();
    let (following, own) = (
        eval(&["--model", "dense"]),
        eval(&["--model", "dense", "--frozen"]),
    );
    assert!(
        far(&following) * 2.0 < far(&own),
        "following {following}, own frame {own}"
    );
}

#[test]
fn bench_quick_writes_a_report_with_every_section_and_its_plots() {
    let out = tempfile::tempdir().unwrap();
    let (ok, text) = vigil(&["bench", "--quick", "--out", out.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert!(
        report["machine"]["cores"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(report["binary_size_bytes"].as_u64().unwrap() > 0);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(report["cold_start_ms"]["median"].as_f64().unwrap() > 0.0);
    let http = report["http"].as_array().unwrap();
    // Four closed-loop cases (one of them CBOR), then open loops at 1,000, 3,000, 5,000 and
    // 20,000 req/s.
    assert_eq!(http.len(), 8);
    let offered: Vec<Option<f64>> = http
        .iter()
        .map(|c| c["offered_requests_per_second"].as_f64())
        .collect();
    assert_eq!(
        offered,
        [
            None,
            None,
            None,
            None,
            Some(1e3),
            Some(3e3),
            Some(5e3),
            Some(2e4)
        ]
    );
    // An open loop this box keeps up with answers what it offers, and is timed from when
    // each request was due.
    assert_eq!(http[3]["scenario"], "64 obs/request in CBOR, 8 connections");
    let slow = &http[4];
    let answered = slow["requests_per_second"].as_f64().unwrap();
    assert!((900.0..=1100.0).contains(&answered), "{slow}");
    for case in http {
        assert!(
            case["requests_per_second"].as_f64().unwrap() > 0.0,
            "{case}"
        );
        assert_eq!(case["failures"], 0, "{case}");
        assert!(
            case["server_cpu_us_per_request"].as_f64().unwrap() > 0.0,
            "{case}"
        );
        let (p50, p99) = (
            case["latency_ms_p50"].as_f64().unwrap(),
            case["latency_ms_p99"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{case}");
    }
    // HTTP alone, and where the scoring cases' CPU went: the log's threads did work in every
    // case (each reading is committed), and the parts add up to the process's CPU.
    let alone = &report["http_alone"];
    assert_eq!(alone["failures"], 0, "{alone}");
    let bare = alone["server_cpu_us_per_request"].as_f64().unwrap();
    assert!(bare > 0.0, "{alone}");
    let floors = report["floors"].as_array().unwrap();
    let scenarios: Vec<&str> = floors
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        scenarios,
        [
            "1 obs/request, 32 connections",
            "64 obs/request, 8 connections",
            "64 obs/request in CBOR, 8 connections"
        ]
    );
    for r in floors {
        let parts = &r["by_part"];
        let part = |k: &str| parts[k].as_f64().unwrap();
        assert!(part("requests") > 0.0 && part("log_writer") > 0.0, "{r}");
        let sum = part("requests") + part("log_writer") + part("checkpoint") + part("other");
        let total = r["server_cpu_us_per_request"].as_f64().unwrap();
        // Read from /proc a moment apart, at 10 ms a tick: equal within a few per cent.
        assert!((sum - total).abs() <= 0.1 * total, "{r}");
        let floor = r["http_alone_and_log_us"].as_f64().unwrap();
        // Summed before the report was written, read back here: equal to the last digits.
        let log = part("log_writer") + part("checkpoint");
        assert!((floor - (bare + log)).abs() <= 1e-9 * floor, "{r}");
        assert!(r["least_ratio_to_peer"].is_null(), "no peer: {r}");
    }
    let in_process = report["in_process"].as_array().unwrap();
    assert!(
        in_process.iter().any(|r| r["batch"] == 4096),
        "{in_process:?}"
    );
    let training = &report["training"];
    assert_eq!(training["observations"], 50_000);
    assert_eq!(training["first_run"]["decision"], "promoted", "{training}");
    assert_eq!(training["fine_tune"]["decision"], "promoted", "{training}");
    assert!(
        training["during_training"]["training_runs_finished"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(
        training["p99_ratio"].as_f64().unwrap().is_finite(),
        "{training}"
    );
    assert!(report["peer"].is_null() && report["quality"].is_null());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for section in [
        "Scoring over HTTP",
        "Where a request's CPU goes",
        "In-process",
        "Training on the box",
        "Footprint",
        "How cost grows",
    ] {
        assert!(md.contains(section), "{section} missing from report.md");
    }
    // The cost curves: every point of the quick plan measured (none skipped on this box).
    let scale = &report["scale"];
    for (curve, xs) in [
        ("streams", &[1, 100, 1_000][..]),
        ("detectors", &[1, 10]),
        ("features", &[4, 32]),
    ] {
        let points = scale[curve].as_array().unwrap();
        let got: Vec<u64> = points.iter().map(|p| p["x"].as_u64().unwrap()).collect();
        assert_eq!(got, xs, "{curve}");
        for p in points {
            assert!(
                p["server_cpu_us_per_request"].as_f64().unwrap() > 0.0,
                "{p}"
            );
            assert!(p["rss_bytes"].as_u64().unwrap() > 0, "{p}");
        }
    }
    let start_up = scale["start_up"]["points"].as_array().unwrap();
    let sizes: Vec<u64> = start_up.iter().map(|p| p["x"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [100_000, 1_000_000]);
    for p in start_up {
        assert!(p["start_up_ms"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["log_bytes"].as_u64().unwrap() > 0, "{p}");
    }
    for plot in [
        "latency.svg",
        "throughput.svg",
        "scale_cpu.svg",
        "scale_memory.svg",
        "start_up.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}"
        );
    }
}

#[test]
fn healthcheck_exits_zero_only_while_the_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = system_tests::TestServer::start(dir.path());
    let url = server.base.clone();
    let (ok, text) = vigil(&["healthcheck", "--url", &url]);
    assert!(ok, "{text}");
    server.stop();
    let (ok, text) = vigil(&["healthcheck", "--url", &url]);
    assert!(!ok, "{text}");
    assert!(text.contains("does not answer"), "{text}");
}

#[test]
fn the_served_adaptive_detector_scores_as_eval_does_and_its_refits_follow_drift() {
    // Served (one request per 10 readings, through HTTP and the log) or in process, the
    // adaptive detector gives the same figures on a fault file.
    let data = skab("valve1/0.csv");
    let served = vigil_json(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "adaptive",
        "--json",
    ]);
    let evaluated = eval_one_file(&data, "adaptive");
    for key in ["f1", "far", "mar", "nab_standard", "missed_cps", "fps"] {
        assert_eq!(
            served["skab"][key], evaluated[key],
            "{key}: {served} vs {evaluated}"
        );
    }
    // NAB above scored the served answers' own changepoints; the alarm's give the same too.
    assert_eq!(
        served["skab"]["alarm_changepoints"], evaluated["alarm_changepoints"],
        "{served} vs {evaluated}"
    );

    // On the pump's anomaly-free hour, the detector that refits on what it judged normal
    // raises a fraction of the alarms of the same detector frozen after its first fit.
    let calm = skab("anomaly-free/anomaly-free-part1.csv");
    let long_run = |options: &str| -> f64 {
        let figures = vigil_json(&[
            "replay",
            "--data",
            calm.to_str().unwrap(),
            "--model",
            "adaptive",
            "--json",
            "--options",
            options,
        ]);
        figures["long_run"]["far"].as_f64().unwrap()
    };
    let following = long_run("{}");
    let frozen = long_run(r#"{"statistical": {"adaptive": {"refit_every": 0}}}"#);
    assert!(
        following * 5.0 < frozen,
        "refitting {following} %, frozen {frozen} %"
    );
    // Learning the pump's own spread (from its residuals, once it has seen enough) takes
    // most of the rest away; moving only the centre leaves the flow's wander alarming.
    let centre_only = long_run(r#"{"statistical": {"adaptive": {"rescale_after": 0}}}"#);
    assert!(
        following * 2.0 < centre_only,
        "spread learnt {following} %, centre only {centre_only} %"
    );
    // And the served figure is `vigil eval`'s.
    assert_eq!(long_run_far(&calm), following);

    // Fitted on the hour's six quiet minutes from row 600, the detector locks into an alarm
    // it cannot learn its way out of; settling ends it once the readings hold steady. Served
    // and evaluated alike, and the replay counts the settlement.
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("from-600.csv");
    let text = std::fs::read_to_string(&calm).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rest: Vec<&str> = lines.skip(600).collect();
    std::fs::write(&late, format!("{header}\n{}\n", rest.join("\n"))).unwrap();
    let replay_late = |options: &str| -> Value {
        vigil_json(&[
            "replay",
            "--data",
            late.to_str().unwrap(),
            "--model",
            "adaptive",
            "--json",
            "--options",
            options,
        ])
    };
    let settling = replay_late("{}");
    let locked = replay_late(r#"{"statistical": {"adaptive": {"settle_after": 0}}}"#);
    let (settling_far, locked_far) = (
        settling["long_run"]["far"].as_f64().unwrap(),
        locked["long_run"]["far"].as_f64().unwrap(),
    );
    assert!(settling["settled"].as_u64().unwrap() >= 1, "{settling}");
    assert_eq!(locked["settled"], 0, "{locked}");
    assert!(
        settling_far * 1.5 < locked_far,
        "settling {settling_far} %, never settling {locked_far} %"
    );
    assert_eq!(long_run_far(&late), settling_far);
}

#[test]
fn a_single_sensor_detector_is_served_by_the_sequence_detector_as_eval_scores_it() {
    // A single-sensor series with a daily rhythm (NAB's ambient temperature, its labelled
    // windows as the anomaly column), as a device app with one sensor would record it.
    let dir = tempfile::tempdir().unwrap();
    let nab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
    let relative = "realKnownCause/ambient_temperature_system_failure.csv";
    // The labels are NAB's windows, as the NAB loader reads them.
    let labels = vigil_datasets::nab::read_nab(&nab, relative)
        .unwrap()
        .labels;
    let mut text = String::from("datetime;value;anomaly;changepoint\n");
    let mut before = 0;
    let lines = std::fs::read_to_string(nab.join(relative)).unwrap();
    for (line, &label) in lines.lines().skip(1).zip(&labels) {
        let (time, value) = line.split_once(',').unwrap();
        text += &format!("{time};{value};{label};{}\n", u8::from(label != before));
        before = label;
    }
    let data = dir.path().join("temperature.csv");
    std::fs::write(&data, text).unwrap();
    let served = vigil_json(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "sequence",
        "--json",
    ]);
    let evaluated = eval_one_file(&data, "sequence");
    for key in [
        "f1",
        "far",
        "mar",
        "nab_standard",
        "missed_cps",
        "fps",
        "tp",
        "fp",
    ] {
        assert_eq!(
            served["skab"][key], evaluated[key],
            "{key}: {served} vs {evaluated}"
        );
    }
    assert!(evaluated["tp"].as_u64().unwrap() > 0, "{evaluated}");

    // Left to choose (the default), a detector of one feature gets the sequence detector and
    // its own alarm rule; one of several features the adaptive one.
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(data_dir.path());
    server.define_detector("one", &json!({"features": ["vibration"]}));
    server.define_detector("two", &json!({"features": ["vibration", "flow"]}));
    let one = server.get("/v1/detectors/one").body;
    assert_eq!(one["serving"]["detector"], "sequence", "{one}");
    assert_eq!(one["serving"]["alarm"]["k"], 1, "{one}");
    assert!(one["serving"]["threshold"].as_f64().unwrap() > 0.0, "{one}");
    let two = server.get("/v1/detectors/two").body;
    assert_eq!(two["serving"]["detector"], "adaptive", "{two}");
    assert_eq!(two["serving"]["alarm"]["k"], 5, "{two}");
    assert!(two["serving"]["threshold"].is_null(), "{two}");
}

/// `vigil eval --protocol long-run` on one file: the share of rows in alarm.
fn long_run_far(data: &Path) -> f64 {
    let figures = vigil_json(&[
        "eval",
        "--protocol",
        "long-run",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    figures["far"].as_f64().unwrap()
}

/// Runs `vigil ARGS…`, which must succeed, and parses the one JSON object it prints.
fn vigil_json(args: &[&str]) -> Value {
    let (ok, text) = vigil(args);
    assert!(ok, "{text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `vigil eval --json` (SKAB protocol) of one SKAB file alone.
fn eval_one_file(data: &std::path::Path, model: &str) -> Value {
    let one = tempfile::tempdir().unwrap();
    std::fs::create_dir(one.path().join("valve1")).unwrap();
    std::fs::copy(data, one.path().join("valve1/0.csv")).unwrap();
    vigil_json(&[
        "eval",
        "--data",
        one.path().to_str().unwrap(),
        "--model",
        model,
        "--json",
        "--threads",
        "1",
    ])
}

#[test]
fn a_nab_series_whose_clock_steps_back_is_scored_as_it_is_with_a_warning() {
    // One of NAB's own files, as published: its timestamps repeat and step back.
    let nab_dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab-dev");
    let relative = "realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv";
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(nab_dev.join("windows.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("realAWSCloudwatch")).unwrap();
    std::fs::copy(nab_dev.join(relative), dir.path().join(relative)).unwrap();
    std::fs::write(
        dir.path().join("windows.json"),
        serde_json::to_vec(&json!({ relative: all[relative] })).unwrap(),
    )
    .unwrap();
    let rows = std::fs::read_to_string(dir.path().join(relative))
        .unwrap()
        .lines()
        .count()
        - 1;

    let data = dir.path().to_str().unwrap();
    let (ok, output) =
        system_tests::run_vigil(&["eval", "--protocol", "nab", "--data", data, "--json"]);
    assert!(ok, "{output}");
    assert!(
        output.contains("warning: realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv")
            && output.contains("repeats or steps back"),
        "{output}"
    );
    // Every row is kept: the probation's rows plus the scored ones make the whole file.
    let predictions = dir.path().join("predictions");
    let (ok, output) = system_tests::run_vigil(&[
        "eval",
        "--protocol",
        "nab",
        "--data",
        data,
        "--predictions-out",
        predictions.to_str().unwrap(),
    ]);
    assert!(ok, "{output}");
    let scored = std::fs::read_to_string(predictions.join(relative))
        .unwrap()
        .lines()
        .count()
        - 1;
    let probation = (rows as f64 * 0.15) as usize;
    assert_eq!(scored, rows - probation.max(1), "{rows} rows");
}

#[test]
fn eval_runs_the_leaderboard_protocol_on_a_folder_of_generic_labelled_csv_files() {
    // Two SKAB files rewritten as a device app might log them: commas, `time`, the sensors,
    // `fault` and `cp` labels, in a folder of one's own beside an unlabelled recording.
    let dir = tempfile::tempdir().unwrap();
    let skab_dir = dir.path().join("skab");
    let csv_dir = dir.path().join("mine/pump-a");
    std::fs::create_dir_all(skab_dir.join("valve1")).unwrap();
    std::fs::create_dir_all(&csv_dir).unwrap();
    for name in ["0.csv", "1.csv"] {
        let original = skab(&format!("valve1/{name}"));
        std::fs::copy(&original, skab_dir.join("valve1").join(name)).unwrap();
        let text = std::fs::read_to_string(&original).unwrap();
        let rewritten: String = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let line = if i == 0 {
                    line.replace("datetime", "time")
                        .replace("changepoint", "cp")
                        .replace("anomaly", "fault")
                } else {
                    line.to_owned()
                };
                line.replace(';', ",") + "\n"
            })
            .collect();
        std::fs::write(csv_dir.join(name), rewritten).unwrap();
    }
    std::fs::write(
        csv_dir.join("calm.csv"),
        "time,Pressure\n2020-01-01 00:00:00,1.0\n",
    )
    .unwrap();
    let skab_figures = vigil_json(&["eval", "--data", skab_dir.to_str().unwrap(), "--json"]);
    let mine = dir.path().join("mine");
    let csv_args = [
        "eval",
        "--data",
        mine.to_str().unwrap(),
        "--format",
        "csv",
        "--timestamp",
        "time",
        "--label",
        "fault",
        "--json",
    ];
    let with_cps: Vec<&str> = csv_args
        .iter()
        .copied()
        .chain(["--changepoint", "cp"])
        .collect();
    let csv_figures = vigil_json(&with_cps);
    assert_eq!(
        csv_figures["files"], 2,
        "the unlabelled recording is left out"
    );
    for key in [
        "f1",
        "far",
        "mar",
        "nab_standard",
        "missed_cps",
        "fps",
        "tp",
        "fp",
    ] {
        assert_eq!(csv_figures[key], skab_figures[key], "{key}");
    }
    // Without a changepoint column the label's rises and falls are the true changepoints:
    // the outlier figures stay, the changepoint windows are the label's. (Unnamed, `cp`
    // would be read as a sensor: every column but the timestamp and labels is one.)
    let header = std::fs::read_to_string(csv_dir.join("0.csv")).unwrap();
    let sensors = header
        .lines()
        .next()
        .unwrap()
        .split(',')
        .collect::<Vec<_>>();
    let sensors = sensors[1..sensors.len() - 2].join(",");
    let derived_args: Vec<&str> = csv_args
        .iter()
        .copied()
        .chain(["--features", sensors.as_str()])
        .collect();
    let derived = vigil_json(&derived_args);
    for key in ["f1", "far", "mar", "tp", "fp"] {
        assert_eq!(derived[key], skab_figures[key], "{key}");
    }
    assert!(derived["true_cps"].as_u64().unwrap() > 0, "{derived}");
    // A label column no file has: nothing to evaluate, said plainly.
    let missing: Vec<&str> = csv_args
        .iter()
        .map(|&a| if a == "fault" { "broken" } else { a })
        .collect();
    let (ok, output) = vigil(&missing);
    assert!(!ok && output.contains("no labelled files"), "{output}");
}

//! Helpers for the benchmarks: start a real `vigil serve` and the FastAPI + onnxruntime peer on
//! 127.0.0.1, load the shared `ae-ref` model into both, and make request bodies.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_models::{FeatureSchema, ModelSpec, Normalisation, PackageBuilder, Threshold};

/// The admin token the benchmark server uses.
const TOKEN: &str = "bench-token";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared` beside the checkout.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

/// A server process, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    _data: tempfile::TempDir,
}

impl Server {
    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 32 feature names of ae-ref.
pub fn ae_ref_features() -> Vec<String> {
    (0..32).map(|i| format!("f{i}")).collect()
}

/// The ae-ref package (PyTorch weights, identity normalisation, threshold 1.0) as a tar.
pub fn ae_ref_tar() -> Vec<u8> {
    let weights = std::fs::read(shared_dir().join("peers/model/ae_ref.safetensors"))
        .expect("ae_ref.safetensors");
    let built = PackageBuilder {
        detector: "ae-ref".into(),
        version: "v1".into(),
        parent: None,
        model: ModelSpec::DenseAutoencoder {
            hidden: vec![64, 16, 64],
        },
        schema: FeatureSchema::new(ae_ref_features(), 1),
        normalisation: Normalisation::identity(32),
        threshold: Threshold {
            value: 1.0,
            method: "fixed".into(),
            parameters: Default::default(),
        },
        training: serde_json::Value::Null,
        evaluation: serde_json::Value::Null,
    }
    .build(weights)
    .expect("ae-ref packages");
    vigil_models::package::archive(&built.manifest, &built.weights)
}

/// Starts `vigil serve` from `binary` with a temporary data directory and the ae-ref model.
pub fn start_vigil(binary: &Path) -> Server {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("VIGIL_ADMIN_TOKEN", TOKEN)
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("vigil prints its address")
            .expect("utf-8");
        if let Some(url) = line.strip_prefix("vigil listening on http://") {
            break url.parse().expect("an address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let server = Server {
        child,
        address,
        _data: data,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let base = format!("http://{address}");
    agent
        .put(format!("{base}/v1/detectors/ae-ref"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send(
            serde_json::to_vec(&serde_json::json!({ "features": ae_ref_features() }))
                .expect("json")
                .as_slice(),
        )
        .expect("create the detector");
    agent
        .put(format!("{base}/v1/detectors/ae-ref/versions"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send(ae_ref_tar().as_slice())
        .expect("upload ae-ref");
    server
}

/// Starts the FastAPI + onnxruntime peer from a virtualenv, or says why it cannot.
pub fn start_peer(venv: &Path) -> Result<Server, String> {
    let uvicorn = venv.join("bin/uvicorn");
    if !uvicorn.exists() {
        return Err(format!(
            "no peer: {} is missing (python3 -m venv {0}/.. && pip install -r ../shared/peers/fastapi_onnx/requirements.txt)",
            uvicorn.display()
        ));
    }
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        probe.local_addr().map_err(|e| e.to_string())?.port()
    };
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let peers = shared_dir().join("peers");
    let child = Command::new(&uvicorn)
        .args(["--app-dir"])
        .arg(peers.join("fastapi_onnx"))
        .args([
            "server:app",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--no-access-log",
            "--log-level",
            "warning",
        ])
        .env("AE_ONNX", peers.join("model/ae_ref.onnx"))
        .env("AE_DB", data.path().join("peer.db"))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Server {
        child,
        address,
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    while agent
        .get(format!("http://{address}/healthz"))
        .call()
        .is_err()
    {
        if Instant::now() > deadline {
            return Err("the peer did not answer /healthz within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

/// A score request body of `n` observations of 32 pseudo-random features.
pub fn score_body(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = vigil_models::rng::XorShift::new(seed);
    let observations: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            let features: Vec<f32> = (0..32)
                .map(|_| ((rng.next_unit() * 4.0 - 2.0) * 1000.0).round() / 1000.0)
                .collect();
            serde_json::json!({ "features": features })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "observations": observations })).expect("json")
}

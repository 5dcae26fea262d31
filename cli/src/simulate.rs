//! `vigil simulate`: a first hour in two minutes. Streams the readings of a healthy synthetic
//! machine ([`vigil_datasets::synthetic`]) into a running server as a device app would, then
//! injects a fault, printing the answers as they come: `warming_up` while the stream's
//! detector fits, `scored`, the alarm and its changepoint, the return to normal.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use vigil_datasets::synthetic::{generate, MachineSpec};

use crate::local::Api;

/// Names of the simulated machine's sensors (as many as `--sensors`, at most these).
const SENSORS: [&str; 6] = [
    "flow",
    "pressure",
    "temperature",
    "vibration",
    "current",
    "speed",
];

/// Arguments of `vigil simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The server, and an admin token (to create the detector).
    #[command(flatten)]
    connection: crate::client::Connection,
    /// The detector to create (if missing) and score with.
    #[arg(long, default_value = "simulated-pump")]
    detector: String,
    #[arg(long, default_value = "pump-1")]
    stream: String,
    /// Sensors (1–6).
    #[arg(long, default_value_t = 4)]
    sensors: usize,
    /// Readings to send in all.
    #[arg(long, default_value_t = 1000)]
    readings: usize,
    /// The fault: a step on the first sensor of this many of its normal spreads…
    #[arg(long, default_value_t = 8.0)]
    fault_size: f64,
    /// …from this reading…
    #[arg(long, default_value_t = 600)]
    fault_at: usize,
    /// …for this many readings.
    #[arg(long, default_value_t = 150)]
    fault_len: usize,
    /// Readings per second (0: as fast as the server answers).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Also print every Nth answer (changes of state are always printed).
    #[arg(long, default_value_t = 100)]
    every: usize,
    /// The machine's seed (the same seed sends the same readings).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(crate) fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=SENSORS.len()).contains(&args.sensors)
            && (1..=10_000_000).contains(&args.readings)
            && args.rate.is_finite()
            && args.rate >= 0.0
            && args.fault_size.is_finite()
            && args.every >= 1,
        "simulate needs 1–6 sensors, 1–10,000,000 readings, a rate ≥ 0, a finite fault size and --every ≥ 1"
    );
    let token = args.connection.token()?.with_context(|| {
        format!(
            "no --token, VIGIL_TOKEN or --token-file, and cannot read {}",
            args.connection
                .data_dir
                .join(vigil_inference::TOKEN_FILE)
                .display()
        )
    })?;
    let api = Api::new(&args.connection.url, Some(token));
    let names = &SENSORS[..args.sensors];
    let path = format!("/v1/detectors/{}", args.detector);
    match api.get(&path) {
        Ok(_) => println!("detector {} exists; scoring with it", args.detector),
        Err(err)
            if err
                .downcast_ref::<crate::local::ApiFailure>()
                .is_some_and(|f| f.status == 404) =>
        {
            api.put_json(&path, &json!({"features": names}))?;
            println!(
                "created detector {} with sensors {}",
                args.detector,
                names.join(", ")
            );
        }
        Err(err) => return Err(err),
    }

    // A healthy machine (its load cycle and noise, no drift), then the fault.
    let machine = generate(&MachineSpec {
        sensors: args.sensors,
        rows: args.readings,
        faults: 0,
        drift: 0.0,
        seed: args.seed,
        ..MachineSpec::default()
    });
    let n = args.sensors;
    let mut values = machine.table.values.clone();
    let spread = {
        let first: Vec<f64> = (0..args.readings.min(400))
            .map(|t| f64::from(values[t * n]))
            .collect();
        let mean = first.iter().sum::<f64>() / first.len().max(1) as f64;
        (first.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / first.len().max(1) as f64).sqrt()
    };
    let fault = args.fault_at..(args.fault_at + args.fault_len).min(args.readings);
    for t in fault.clone() {
        values[t * n] += (args.fault_size * spread) as f32;
    }

    let started = Instant::now();
    let mut last: Option<(String, bool)> = None;
    let batch = 10;
    for first in (0..args.readings).step_by(batch) {
        let end = (first + batch).min(args.readings);
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(first as f64 / args.rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let observations: Vec<Value> = (first..end)
            .map(|t| json!({"stream": args.stream, "features": &values[t * n..(t + 1) * n]}))
            .collect();
        let answer = api.post(
            &format!("/v1/detectors/{}/score", args.detector),
            &json!({ "observations": observations }),
        )?;
        let results = answer["results"].as_array().context("no results")?;
        for (k, result) in results.iter().enumerate() {
            let t = first + k;
            if t == fault.start && !fault.is_empty() {
                println!(
                    "reading {:>5}  fault injected: {} steps by {} normal spreads for {} readings",
                    t + 1,
                    names[0],
                    args.fault_size,
                    fault.len()
                );
            }
            if t == fault.end && !fault.is_empty() {
                println!(
                    "reading {:>5}  fault over: {} back to normal",
                    t + 1,
                    names[0]
                );
            }
            let status = result["status"].as_str().unwrap_or("?").to_owned();
            let alarm = result["alarm"] == true;
            let changed = last.as_ref() != Some(&(status.clone(), alarm));
            let changepoint = result["changepoint"] == true;
            if changed || changepoint || (t + 1) % args.every == 0 {
                let ended = last.as_ref().is_some_and(|(_, was)| *was) && !alarm;
                let suffix = if ended { "  alarm ended" } else { "" };
                println!("reading {:>5}  {}{suffix}", t + 1, describe(result));
            }
            last = Some((status, alarm));
        }
    }
    println!(
        "done: {} readings. The alarm's record: GET {}/v1/alarms?detector={}",
        args.readings, args.connection.url, args.detector
    );
    Ok(())
}

/// One answer in a line.
fn describe(result: &Value) -> String {
    if result["status"] == "warming_up" {
        return format!(
            "warming_up  {}/{} readings to fit on",
            result["warming_up"]["have"], result["warming_up"]["need"]
        );
    }
    let number = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let mut line = format!(
        "scored      score {} threshold {}",
        number(&result["score"]),
        number(&result["threshold"])
    );
    if result["anomaly"] == true {
        line += "  anomaly";
    }
    if result["alarm"] == true {
        line += "  ALARM";
    }
    if result["changepoint"] == true {
        line += "  changepoint";
    }
    if result["alarm"] == true || result["changepoint"] == true {
        if let Some(top) = result["contributions"].as_array().and_then(|c| c.first()) {
            line += &format!(
                "  (mostly {}: {:.0} %)",
                top["feature"].as_str().unwrap_or("?"),
                top["share"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
    }
    line
}

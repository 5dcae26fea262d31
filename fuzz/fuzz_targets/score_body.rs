//! The score request body: any bytes, read as JSON and as CBOR, get readings or a 4xx, never a
//! panic, never 5xx.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_inference::api::{parse_score_body, Format};
use vigil_models::FeatureSchema;

fuzz_target!(|data: &[u8]| {
    let schema = FeatureSchema::new(["flow", "pressure", "temperature"], 1);
    for format in [Format::Json, Format::Cbor] {
        match parse_score_body(data, format, &schema, 64) {
            Ok(readings) => {
                assert!(!readings.is_empty() && readings.len() <= 64);
                for reading in readings {
                    assert_eq!(reading.values.len(), 3);
                    assert!(reading.values.iter().all(|v| v.is_finite()));
                }
            }
            Err(err) => assert!(err.status().is_client_error(), "{err}"),
        }
    }
});

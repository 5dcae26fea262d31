//! The configuration file: any text is a checked configuration or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_inference::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_toml(text) {
            assert!(config.max_batch > 0 && config.max_connections > 0);
            assert!(config.log_queue >= config.max_batch);
        }
    }
});

//! The real `vigil` binary, built inside this package so that its tests can run it
//! (`CARGO_BIN_EXE_vigil`). Identical to `inference/src/main.rs`.

fn main() -> std::process::ExitCode {
    vigil_inference::cli::main()
}

//! The `vigil` binary: everything lives in the library.

/// mimalloc: the scoring path allocates on the HTTP workers and frees on the log writer's
/// thread, which glibc's allocator handles poorly (it showed as ~10 % of server CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vigil_cli::main()
}

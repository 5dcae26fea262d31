//! Records the commit the binary is built from as `VIGIL_COMMIT` (for `vigil_build_info`):
//! the environment's `VIGIL_COMMIT` if set (a container build passes it), else
//! `git rev-parse`, else nothing (`unknown`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VIGIL_COMMIT");
    if std::env::var_os("VIGIL_COMMIT").is_some() {
        return;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=VIGIL_COMMIT={commit}");
    }
    // Built again when the checked-out commit changes.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
}

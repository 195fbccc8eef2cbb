//! Records the git commit the binary is built from, for `tidings --version` and `/health`.
//! `TIDINGS_GIT_COMMIT` in the environment wins (builds from a tarball have no git).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TIDINGS_GIT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("TIDINGS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TIDINGS_GIT_COMMIT={commit}");
}

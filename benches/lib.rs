//! Shared setup for Skiff's benchmarks: the sample component, built once.

use std::path::{Path, PathBuf};

/// Builds `examples/rust-hello` for wasm32-wasip2 (once; cargo skips it when fresh) and
/// returns the component's path.
pub fn hello_component() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/bench-guest");
    let status = std::process::Command::new("cargo")
        .current_dir(root.join("examples/rust-hello"))
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--bin",
            "rust-hello",
        ])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "building examples/rust-hello for wasm32-wasip2 failed (rustup target add wasm32-wasip2)"
    );
    target.join("wasm32-wasip2/release/rust-hello.wasm")
}

//! Test images, built FROM scratch because no registry is reachable from test machines.

/// Builds `berth-busybox:1` (FROM scratch, images/build-busybox.sh); panics with the
/// script's stderr if it fails.
pub fn build_busybox() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/build-busybox.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .expect("run build-busybox.sh");
    assert!(
        out.status.success(),
        "build-busybox.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Benchmark images: layers of random (incompressible) bytes, built FROM scratch with the local
//! engine; and `docker` invocations that fail with the engine's message.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `docker ARGS` on the engine at `host` (None: the default one); stdout, trimmed.
pub fn docker_on(host: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.env("DOCKER_HOST", h);
    }
    let out = cmd.args(args).output().context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker ARGS` on the default engine.
pub fn docker(args: &[&str]) -> Result<String> {
    docker_on(None, args)
}

/// xorshift64*: random-looking, incompressible bytes, fast.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Build `name` FROM scratch with `layers` layers of `mib` MiB of random bytes each.
pub fn build_random_image(dir: &Path, name: &str, layers: usize, mib: usize) -> Result<()> {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx)?;
    let mut dockerfile = String::from("FROM scratch\n");
    let mut buf = vec![0u8; mib << 20];
    for i in 0..layers {
        fill_random(
            &mut buf,
            0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1) ^ u64::from(std::process::id()),
        );
        std::fs::write(ctx.join(format!("l{i}")), &buf)?;
        dockerfile.push_str(&format!("COPY l{i} /l{i}\n"));
    }
    std::fs::write(ctx.join("Dockerfile"), dockerfile)?;
    docker(&["build", "-q", "-t", name, &ctx.display().to_string()])?;
    Ok(())
}

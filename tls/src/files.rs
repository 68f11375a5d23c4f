//! Private files and directories: keys and configs readable by their owner only.

use std::io::Write;
use std::path::Path;

use crate::error::io_err;
use crate::TlsError;

/// Create the directory `path`, readable by its owner only, for keys and state (the one
/// helper every Berth data dir goes through). Mode semantics (unix):
///
/// - `path` itself ends up exactly 0700, also when it already existed with another mode
///   (a too-open data dir is tightened);
/// - parents that are missing are created 0700 too (created with that mode, so there is no
///   moment when they are more open; the umask can only narrow it);
/// - parents that already exist keep their mode (`/var/lib`, `$HOME`, ... are not ours).
///
/// Errors name the path ([`TlsError::Io`]).
pub fn create_private_dir(path: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path).map_err(io_err(path))?;
    set_mode(path, 0o700)
}

/// Write `contents` to `path` readable by its owner only (0600), also when it already existed.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    // An existing file keeps its mode on open: tighten it before writing the secret.
    if path.exists() {
        set_mode(path, 0o600)?;
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

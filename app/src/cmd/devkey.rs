//! The development key: created on first start without
//! JWT_PUBLIC_KEY_URL, kept (mode 0600) in RELAY_DEV_KEY_FILE, used by
//! `relay token`.

use anyhow::Context;
use relay_adapter_jwt::DevKeys;
use std::path::{Path, PathBuf};

/// `$TMPDIR/relay-dev-key.pem`.
pub fn default_key_file() -> PathBuf {
    std::env::temp_dir().join("relay-dev-key.pem")
}

pub fn load_key(path: &Path) -> anyhow::Result<Option<DevKeys>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => Ok(Some(DevKeys::from_pem(&pem).with_context(|| {
            format!("{} is not a development key", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn dev_key(path: &Path) -> anyhow::Result<DevKeys> {
    if let Some(keys) = load_key(path)? {
        return Ok(keys);
    }
    let keys = DevKeys::generate();
    write_private(path, &keys.to_pem()).with_context(|| format!("writing {}", path.display()))?;
    Ok(keys)
}

pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

//! The development key: created on first start without
//! JWT_PUBLIC_KEY_URL, kept (mode 0600) in RELAY_DEV_KEY_FILE, used by
//! `relay token`; and what development mode tells the person who started
//! it.
//!
//! A key file is used only if it is a regular file of this process's user
//! that nobody else may read or write: on a shared machine another user
//! could otherwise plant a key in `$TMPDIR` before Relay first starts (and
//! mint tokens it accepts), or read it.

use super::TokenArgs;
use anyhow::Context;
use relay_adapter_jwt::DevKeys;
use relay_adapter_jwt::TokenRequest;
use relay_ports::protocol::Role;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// `$TMPDIR/relay-dev-key.pem`.
pub fn default_key_file() -> PathBuf {
    std::env::temp_dir().join("relay-dev-key.pem")
}

pub fn load_key(path: &Path) -> anyhow::Result<Option<DevKeys>> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // The opened file's own metadata: what is checked is what is read.
    #[cfg(unix)]
    {
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        relay_adapter_jwt::check_private_file(&meta).with_context(|| {
            format!(
                "refusing the development key {}; delete it to have a new one made \
                 (or `chmod 600` it if it is yours)",
                path.display()
            )
        })?;
    }
    let mut pem = String::new();
    file.read_to_string(&mut pem)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(DevKeys::from_pem(&pem).with_context(|| {
        format!("{} is not a development key", path.display())
    })?))
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
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Tells the person who started Relay in development mode what it is and
/// how to connect, on stderr. The editor token for every document is
/// printed only when stderr is a terminal: a container's or a service's
/// stderr ends up in logs, where a token that opens every document does
/// not belong; there it says how to mint one instead.
pub fn announce_development(
    keys: &DevKeys,
    path: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    tracing::warn!(
        "DEVELOPMENT MODE: in-memory store, bus and presence - nothing persists across restarts"
    );
    let mut stderr = std::io::stderr().lock();
    let terminal = stderr.is_terminal();
    announce_to(&mut stderr, terminal, keys, path, addr)
}

fn announce_to(
    out: &mut impl Write,
    terminal: bool,
    keys: &DevKeys,
    path: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let path = path.display();
    let token_lines = if terminal {
        let token = mint(
            keys,
            &TokenArgs {
                sub: None,
                doc: "*".into(),
                role: Role::Editor,
                name: Some("Developer".into()),
                ttl_secs: 24 * 3600,
                key_file: None,
            },
        )?;
        format!(
            "An editor token for every document (valid 24 h):\n\n{token}\n\n\
             More tokens: relay token --sub <uuid> --doc <uuid|*> --role <owner|editor|viewer>\n"
        )
    } else {
        format!(
            "A token is printed only to a terminal (logs are no place for one); mint one with\n\
             \x20            relay token --key-file {path} --doc '*' --role editor\n\
             \x20            (options: --sub <uuid> --doc <uuid|*> --role <owner|editor|viewer>)\n"
        )
    };
    writeln!(
        out,
        "\nRelay is running in development mode on {addr}.\n\
         Nothing is persisted: set DATABASE_URL, REDIS_URL and JWT_PUBLIC_KEY_URL for production.\n\
         Development key: {path} (JWKS at http://{addr}/.well-known/jwks.json)\n\n\
         {token_lines}\
         Connect:     ws://{addr}/collab/<document-uuid>  (subprotocol relay.v1), then send\n\
         {{\"type\":\"join\",\"client_id\":\"tab-1\",\"token\":\"<token>\",\"since\":null}}"
    )?;
    Ok(())
}

/// A development token for `args` signed with `keys` (`relay token`, and
/// the one printed at start).
pub fn mint(keys: &DevKeys, args: &TokenArgs) -> anyhow::Result<String> {
    if args.doc != "*" {
        Uuid::parse_str(&args.doc).context("--doc must be a UUID or *")?;
    }
    let mut docs = BTreeMap::new();
    docs.insert(args.doc.clone(), args.role);
    keys.mint(&TokenRequest {
        sub: args.sub.unwrap_or_else(Uuid::new_v4),
        name: args.name.clone(),
        docs,
        ttl_secs: args.ttl_secs,
    })
    .context("minting the token")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of its own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!("relay-devkey-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refusal(path: &Path) -> String {
        match load_key(path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_other_users_may_read_or_write_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("dev.pem");
        let made = dev_key(&path).unwrap();
        // Made 0600 and ours: loaded again, the same key.
        let loaded = load_key(&path).unwrap().expect("the key just written");
        assert_eq!(loaded.jwks_json(), made.jwks_json());
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666] {
            chmod(&path, mode);
            let error = refusal(&path);
            assert!(
                error.contains("other users may read or write it")
                    && error.contains(&format!("{mode:03o}")),
                "mode {mode:o}: {error}"
            );
            assert!(
                dev_key(&path).is_err(),
                "dev_key used a {mode:o} file (or replaced it)"
            );
        }
        chmod(&path, 0o400);
        assert!(load_key(&path).unwrap().is_some(), "0400 is private too");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_of_another_user_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("dev.pem");
        dev_key(&path).unwrap();
        let me = my_uid(&dir.0);
        let other = if me == 0 { 4242 } else { 0 };
        match std::os::unix::fs::chown(&path, Some(other), None) {
            Ok(()) => {
                let error = refusal(&path);
                assert!(
                    error.contains(&format!("belongs to user {other}")),
                    "{error}"
                );
            }
            // Only root may give a file away.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                println!("skipped the owner case: chown needs root here ({e})");
            }
            Err(e) => panic!("chown: {e}"),
        }
    }

    /// This process's effective user: the owner of a file it just made.
    #[cfg(unix)]
    fn my_uid(dir: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        let probe = dir.join("probe");
        std::fs::write(&probe, "").unwrap();
        std::fs::metadata(&probe).unwrap().uid()
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_or_a_missing_file() {
        let dir = TempDir::new();
        assert!(load_key(&dir.0.join("absent.pem")).unwrap().is_none());
        let sub = dir.0.join("sub");
        std::fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o700);
        let error = refusal(&sub);
        assert!(
            error.contains("not a regular file") || error.contains("reading"),
            "{error}"
        );
    }

    fn announcement(terminal: bool, keys: &DevKeys) -> String {
        let mut out = Vec::new();
        announce_to(
            &mut out,
            terminal,
            keys,
            Path::new("/tmp/relay-dev-key.pem"),
            "127.0.0.1:8081".parse().unwrap(),
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_development_token_is_printed_only_to_a_terminal() {
        let keys = DevKeys::generate();
        let logged = announcement(false, &keys);
        assert!(!logged.contains("eyJ"), "a token in a log:\n{logged}");
        assert!(
            logged
                .contains("relay token --key-file /tmp/relay-dev-key.pem --doc '*' --role editor"),
            "{logged}"
        );
        assert!(logged.contains("ws://127.0.0.1:8081/collab/"), "{logged}");

        let shown = announcement(true, &keys);
        let token = shown
            .split_whitespace()
            .find(|w| w.starts_with("eyJ"))
            .unwrap_or_else(|| panic!("no token on a terminal:\n{shown}"));
        // A token the key verifies, for every document.
        let verifier = relay_adapter_jwt::JwtVerifier::new(Default::default());
        verifier.set_keys(keys.key_set());
        let claims = verifier.verify_token(token).expect("a valid token");
        assert_eq!(claims.name.as_deref(), Some("Developer"));
    }
}

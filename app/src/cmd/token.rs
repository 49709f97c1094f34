//! `relay token`: a development token signed with the running server's
//! development key.

use super::TokenArgs;
use super::devkey::{default_key_file, load_key, mint};
use anyhow::Context;

pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    let path = args.key_file.clone().unwrap_or_else(default_key_file);
    let keys = load_key(&path)?.with_context(|| {
        format!(
            "no development key at {}: start `relay` first (it creates one)",
            path.display()
        )
    })?;
    println!("{}", mint(&keys, args)?);
    Ok(())
}

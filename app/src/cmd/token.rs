//! `relay token`: a development token signed with the running server's
//! development key.

use super::TokenArgs;
use super::devkey::{default_key_file, load_key};
use anyhow::Context;
use relay_adapter_jwt::{DevKeys, TokenRequest};
use std::collections::BTreeMap;
use uuid::Uuid;

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

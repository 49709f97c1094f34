//! `relay migrate`: applies pending migrations on DATABASE_URL and exits
//! (the Kubernetes migration Job).

use anyhow::Context;
use relay_app::config::Config;
use relay_app::wiring;

pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pool =
            wiring::pg_pool(&config)?.context("DATABASE_URL: required by `relay migrate`")?;
        let applied = pool.run_migrations().await.context("running migrations")?;
        if applied.is_empty() {
            println!("the schema is up to date");
        } else {
            for name in applied {
                println!("applied {name}");
            }
        }
        Ok(())
    })
}

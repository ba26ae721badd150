//! The device store the config chooses (`gateway.devices.store`).

use std::path::Path;
use std::sync::Arc;

use driftless_core::config::{DeviceStoreKind, PostgresConfig};
use driftless_core::{Config, Env, SecretInput};

use super::{DeviceStore, PostgresOptions, PostgresStore, SqliteStore, StoreError, TokenKey};

/// Opens the configured store: SQLite in `state_dir` (the default), or the PostgreSQL database of
/// `[gateway.devices.postgres]`, whose secret references are resolved against `env` and
/// `config_dir` (the password again for each new connection). Blocks: call it before serving.
pub fn open_configured(
    config: &Config,
    env: &Env,
    config_dir: &Path,
    state_dir: &Path,
) -> Result<Arc<dyn DeviceStore>, StoreError> {
    let devices = &config.gateway.devices;
    match (devices.store, &devices.postgres) {
        (DeviceStoreKind::Sqlite, _) => Ok(Arc::new(SqliteStore::open_in(state_dir)?)),
        (DeviceStoreKind::Postgres, Some(pg)) => Ok(Arc::new(open_postgres(pg, env, config_dir)?)),
        (DeviceStoreKind::Postgres, None) => Err(StoreError::Postgres {
            what: "gateway.devices".into(),
            detail: "store = \"postgres\" needs [gateway.devices.postgres]".into(),
        }),
    }
}

fn open_postgres(
    pg: &PostgresConfig,
    env: &Env,
    config_dir: &Path,
) -> Result<PostgresStore, StoreError> {
    let field_err = |field: &str, detail: String| StoreError::Postgres {
        what: format!("gateway.devices.postgres.{field}"),
        detail,
    };
    let key = pg
        .token_key
        .resolve(env, config_dir)
        .map_err(|e| field_err("token_key", e.to_string()))?;
    let token_key = TokenKey::from_secret(&key).ok_or_else(|| {
        field_err(
            "token_key",
            "not a device token key (expected 32 random bytes, base64url without padding, e.g. \
             from `head -c 32 /dev/urandom | basenc --base64url | tr -d =`)"
                .into(),
        )
    })?;
    drop(key);
    let password: Option<SecretInput> = pg.password.clone();
    let (env, base) = (env.clone(), config_dir.to_owned());
    PostgresStore::open(PostgresOptions {
        url: pg.url.clone(),
        password: Box::new(move || {
            password
                .as_ref()
                .map(|p| p.resolve(&env, &base))
                .transpose()
                .map_err(|e| e.to_string())
        }),
        token_key,
        pool_size: pg.pool_size as usize,
    })
}

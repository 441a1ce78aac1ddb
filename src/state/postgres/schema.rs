//! The PostgreSQL schema's versions (`migrations/postgres/*.sql`), applied at open under an
//! advisory lock (two instances starting at once migrate once). A database whose schema is newer
//! than this binary knows is refused: an older binary must not write a newer layout.

use tokio_postgres::Client;

use super::pg_err;
use crate::error::{Error, Refusal, Result};

/// Every migration, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: [&str; 1] = [include_str!("../../../migrations/postgres/0001_init.sql")];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key of migrations ("sscard" in ASCII).
const MIGRATION_LOCK: i64 = 0x7373_6361_7264;

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a newer one.
pub(super) async fn migrate(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); \
             CREATE TABLE IF NOT EXISTS kms_schema (\
                 version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(pg_err)?;
    let applied: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM kms_schema", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if applied > SCHEMA_VERSION {
        let _ = client.batch_execute("ROLLBACK").await;
        tracing::error!(
            database = applied,
            binary = SCHEMA_VERSION,
            "the store's schema is newer than this binary: upgrade sscard-kms"
        );
        return Err(Error::FailedPrecondition {
            reason: Refusal::StoreSchemaNewer,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = i as i32 + 1;
        let step = async {
            client.batch_execute(sql).await?;
            client
                .execute("INSERT INTO kms_schema (version) VALUES ($1)", &[&version])
                .await
        };
        if let Err(e) = step.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(pg_err(e));
        }
        tracing::info!(version, "store schema migrated");
    }
    client.batch_execute("COMMIT").await.map_err(pg_err)
}

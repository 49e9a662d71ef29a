//! Removing what crashed replicas left: uploads nobody drives any more, and
//! objects whose delete did not finish. Each row is taken under
//! `FOR UPDATE SKIP LOCKED`, so replicas sweeping at once never take the
//! same one, and a live upload committing right now is never touched.

use object_store::ObjectStoreExt;
use sesphr_domain::pg::pg_error;

use super::Inner;
use super::objects::{is_not_found, s3_error};
use super::upload::remove_upload_object;
use crate::DomainError;

/// Removes uploads untouched since `before` and objects doomed since then;
/// returns how many of either it removed.
pub(crate) async fn sweep(inner: &Inner, before: i64) -> Result<usize, DomainError> {
    let mut removed = 0;
    while sweep_one_upload(inner, before).await? {
        removed += 1;
    }
    loop {
        let conn = inner.pg.client().await?;
        let rows = conn
            .query(
                "SELECT object_key FROM cloud_storage.doomed_objects WHERE since < $1 \
                 ORDER BY since LIMIT 100",
                &[&before],
            )
            .await
            .map_err(pg_error)?;
        drop(conn);
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let key: String = row.get(0);
            remove_doomed(inner, &key).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed abandoned uploads and orphaned objects");
    }
    Ok(removed)
}

/// Takes one stale upload, removes its object and its row.
async fn sweep_one_upload(inner: &Inner, before: i64) -> Result<bool, DomainError> {
    let mut conn = inner.pg.client().await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    let row = tx
        .query_opt(
            "SELECT record_id, upload_id, object_key, multipart_id FROM cloud_storage.pending \
             WHERE touched_at < $1 ORDER BY touched_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&before],
        )
        .await
        .map_err(pg_error)?;
    let Some(row) = row else {
        return Ok(false);
    };
    let (record_id, upload_id, key): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    let multipart: Option<String> = row.get(3);
    remove_upload_object(inner, &key, multipart.as_ref()).await?;
    tx.execute(
        "DELETE FROM cloud_storage.pending WHERE record_id = $1 AND upload_id = $2",
        &[&record_id, &upload_id],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    tracing::info!(record_id, "swept an abandoned upload");
    Ok(true)
}

/// Deletes a doomed object, then its row.
pub(crate) async fn remove_doomed(inner: &Inner, key: &str) -> Result<(), DomainError> {
    delete_object(inner, key).await?;
    let conn = inner.pg.client().await?;
    conn.execute(
        "DELETE FROM cloud_storage.doomed_objects WHERE object_key = $1",
        &[&key],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Deletes an object; one already gone is fine.
pub(crate) async fn delete_object(inner: &Inner, key: &str) -> Result<(), DomainError> {
    match inner.objects.s3.delete(&inner.objects.path(key)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(s3_error("removing an object", e)),
    }
}

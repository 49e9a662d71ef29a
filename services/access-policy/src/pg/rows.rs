//! Reading columns and converting the numbers PostgreSQL stores signed.

use sesphr_domain::pg::pg_error;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::{DomainError, Grant};

/// Column `i` of `row`; a type mismatch means the schema is not ours.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, DomainError> {
    row.try_get(i).map_err(|e| {
        DomainError::Corrupt(format!("unexpected column {i} in the policy tables: {e}"))
    })
}

/// A stored sequence number, size or index (never negative).
pub(super) fn to_u64(v: i64, what: &str) -> Result<u64, DomainError> {
    u64::try_from(v).map_err(|_| DomainError::Corrupt(format!("{what} {v} is negative")))
}

/// A sequence number, size or index as PostgreSQL stores it. Beyond
/// `i64::MAX` nothing fits: the caller's value is out of range.
pub(super) fn to_i64(v: u64, what: &str) -> Result<i64, DomainError> {
    i64::try_from(v).map_err(|_| DomainError::Malformed(format!("{what} {v} is out of range")))
}

/// A 32-byte hash column.
pub(super) fn hash(v: &[u8], what: &str) -> Result<[u8; 32], DomainError> {
    v.try_into()
        .map_err(|_| DomainError::Corrupt(format!("{what} is not 32 bytes")))
}

/// The columns [`grant_from_row`] reads, in its order.
pub(super) const GRANT_COLUMNS: &str = "owner_id, partition, grantee_id, grantee_role, \
     epoch_min, epoch_max, not_before, expires_at, granted_at";

pub(super) fn grant_from_row(row: &Row) -> Result<Grant, DomainError> {
    let owner_id: String = col(row, 0)?;
    let partition: String = col(row, 1)?;
    let grantee_id: String = col(row, 2)?;
    let label = format!("grant {owner_id}/{partition}/{grantee_id}");
    let role: String = col(row, 3)?;
    let grantee_role = role
        .parse()
        .map_err(|e| DomainError::Corrupt(format!("{label}: {e}")))?;
    let epoch =
        |v: i64| u32::try_from(v).map_err(|_| DomainError::Corrupt(format!("{label}: epoch {v}")));
    let epoch_max: Option<i64> = col(row, 5)?;
    Ok(Grant {
        grantee_role,
        epoch_min: epoch(col(row, 4)?)?,
        epoch_max: epoch_max.map(epoch).transpose()?,
        not_before: col(row, 6)?,
        expires_at: col(row, 7)?,
        granted_at: col(row, 8)?,
        owner_id,
        partition,
        grantee_id,
    })
}

/// Runs a statement's future, mapping the driver's error.
pub(super) async fn q<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DomainError> {
    f.await.map_err(pg_error)
}

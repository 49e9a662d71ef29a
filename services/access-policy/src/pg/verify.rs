//! Reading the log: pages of it, and the walk that recomputes the chain.
//!
//! Entries never change once committed, so neither takes a lock: the walk
//! covers the log up to the head it read first, and entries appended by
//! any replica meanwhile are left for the next verification.

use sesphr_identity::validate_user_id;
use tokio_postgres::GenericClient;

use super::PgPolicyStore;
use super::log;
use super::rows::{col, q, to_i64, to_u64};
use crate::audit;
use crate::{
    AuditEntry, AuditFilter, AuditReport, DEFAULT_AUDIT_PAGE, DomainError, GENESIS_HASH,
    MAX_AUDIT_PAGE, OwnerAuditReport, OwnerStats,
};

/// Entries read per query while walking.
const WALK_PAGE: i64 = 1000;

fn decode_row(row: &tokio_postgres::Row) -> Result<(u64, String, AuditEntry), DomainError> {
    let seq = to_u64(col(row, 0)?, "audit sequence number")?;
    let owner: String = col(row, 1)?;
    let e = audit::decode_value(seq, col(row, 2)?)?;
    Ok((seq, owner, e))
}

pub(super) fn page(
    s: &PgPolicyStore,
    filter: &AuditFilter,
) -> Result<Vec<AuditEntry>, DomainError> {
    let limit = match filter.limit {
        0 => DEFAULT_AUDIT_PAGE,
        n => n.min(MAX_AUDIT_PAGE),
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if let Some(owner) = &filter.owner_id {
        validate_user_id(owner)?;
    }
    // Past the last storable seq there is nothing to list.
    let Ok(after) = i64::try_from(filter.after_seq) else {
        return Ok(Vec::new());
    };
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        let rows = match &filter.owner_id {
            None => {
                q(conn.query(
                    "SELECT seq, owner_id, value FROM access_policy.audit_entries \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                ))
                .await?
            }
            Some(owner) => {
                q(conn.query(
                    "SELECT seq, owner_id, value FROM access_policy.audit_entries \
                     WHERE owner_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[owner, &after, &limit],
                ))
                .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let (seq, owner, e) = decode_row(row)?;
            if e.seq != seq {
                return Err(DomainError::Corrupt(format!(
                    "audit entry stored as {seq} claims to be entry {}",
                    e.seq
                )));
            }
            if e.owner_id != owner {
                return Err(DomainError::Corrupt(format!(
                    "owner index for {owner:?} names audit entry {seq} of another owner"
                )));
            }
            out.push(e);
        }
        Ok(out)
    })
}

pub(super) fn verify_audit(
    s: &PgPolicyStore,
    expected_head: Option<(u64, [u8; 32])>,
) -> Result<AuditReport, DomainError> {
    Ok(walk(s, expected_head, None)?.0)
}

/// As [`crate::PolicyStore::verify_audit_for`]: the whole walk, told to
/// one owner about her own entries only; the full report is logged.
pub(super) fn verify_audit_for(
    s: &PgPolicyStore,
    owner_id: &str,
    expected_own: Option<(u64, [u8; 32])>,
) -> Result<OwnerAuditReport, DomainError> {
    validate_user_id(owner_id)?;
    let (report, own) = walk(s, None, Some(owner_id))?;
    let (head_seq, head_hash) = own.last.unwrap_or((0, GENESIS_HASH));
    let mut out = OwnerAuditReport {
        ok: report.ok,
        entries: own.entries,
        head_seq,
        head_hash,
        problem: None,
    };
    if !report.ok {
        tracing::error!(
            asked_by = %owner_id,
            first_bad_seq = ?report.first_bad_seq,
            problem = report.problem.as_deref().unwrap_or(""),
            "audit log failed verification"
        );
        out.problem =
            Some("the audit log failed verification; an operator's VerifyAudit shows where".into());
        return Ok(out);
    }
    if let Some((seq, hash)) = expected_own {
        let stored = if seq > report.head_seq {
            None
        } else {
            s.pg.block_on(async {
                let conn = s.pg.client().await?;
                log::entry(&**conn, seq).await
            })?
        };
        let matches = stored.is_some_and(|e| e.owner_id == owner_id && e.hash == hash);
        if !matches {
            out.ok = false;
            out.problem = Some(format!(
                "entry {seq} with hash {} is not in {owner_id}'s audit view: \
                 it was removed or rewritten, or was never hers",
                hex::encode(hash)
            ));
        }
    }
    Ok(out)
}

fn fail(r: &mut AuditReport, seq: u64, problem: String) {
    r.ok = false;
    r.first_bad_seq = Some(seq);
    r.problem = Some(problem);
}

fn walk(
    s: &PgPolicyStore,
    expected_head: Option<(u64, [u8; 32])>,
    owner: Option<&str>,
) -> Result<(AuditReport, OwnerStats), DomainError> {
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        walk_with(&**conn, expected_head, owner).await
    })
}

async fn walk_with<C: GenericClient>(
    c: &C,
    expected_head: Option<(u64, [u8; 32])>,
    owner: Option<&str>,
) -> Result<(AuditReport, OwnerStats), DomainError> {
    let row = q(c.query_one("SELECT max(seq) FROM access_policy.audit_entries", &[])).await?;
    let last: Option<i64> = col(&row, 0)?;
    let last = last.unwrap_or(0);
    let mut report = AuditReport {
        ok: true,
        entries: 0,
        head_seq: 0,
        head_hash: GENESIS_HASH,
        first_bad_seq: None,
        problem: None,
    };
    let mut own = OwnerStats::default();
    'pages: while to_i64(report.head_seq, "audit sequence number")? < last {
        let after = to_i64(report.head_seq, "audit sequence number")?;
        let rows = q(c.query(
            "SELECT seq, owner_id, value FROM access_policy.audit_entries \
             WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            &[&after, &last, &WALK_PAGE],
        ))
        .await?;
        for row in &rows {
            let expected = report.head_seq.saturating_add(1);
            let (seq, stored_owner, e) = match decode_row(row) {
                Ok(x) => x,
                Err(err) => {
                    fail(&mut report, expected, err.to_string());
                    break 'pages;
                }
            };
            if seq != expected {
                fail(
                    &mut report,
                    expected,
                    format!("entry {expected} is missing (next stored entry is {seq})"),
                );
                break 'pages;
            }
            if e.seq != seq {
                fail(
                    &mut report,
                    seq,
                    format!("entry stored as {seq} claims to be entry {}", e.seq),
                );
                break 'pages;
            }
            if e.prev_hash != report.head_hash {
                fail(
                    &mut report,
                    seq,
                    format!("entry {seq} does not link to entry {}", seq - 1),
                );
                break 'pages;
            }
            if audit::recompute_hash(&e) != e.hash {
                fail(
                    &mut report,
                    seq,
                    format!("entry {seq} was modified: its content does not match its hash"),
                );
                break 'pages;
            }
            // The owner column is the per-owner view: it must name the
            // entry's own owner, or her view would miss it or show another's.
            if stored_owner != e.owner_id {
                let problem = if e.owner_id.is_empty() {
                    format!("entry {seq} is in {stored_owner}'s audit view but names no owner")
                } else {
                    format!("entry {seq} is missing from {}'s audit view", e.owner_id)
                };
                fail(&mut report, seq, problem);
                break 'pages;
            }
            if !e.owner_id.is_empty() && owner == Some(e.owner_id.as_str()) {
                own.entries += 1;
                own.last = Some((seq, e.hash));
            }
            report.entries += 1;
            report.head_seq = seq;
            report.head_hash = e.hash;
        }
        if rows.is_empty() {
            // Entries up to `last` were there when it was read and are
            // never deleted by the store: some were removed since.
            let expected = report.head_seq.saturating_add(1);
            fail(
                &mut report,
                expected,
                format!("entry {expected} is missing (the log ended at {last} when read)"),
            );
            break;
        }
    }
    if !report.ok {
        return Ok((report, own));
    }
    if let Some((seq, hash)) = expected_head {
        if seq > report.head_seq {
            report.ok = false;
            report.first_bad_seq = Some(report.head_seq.saturating_add(1));
            report.problem = Some(format!(
                "log ends at entry {} but entry {seq} was published earlier: entries were removed",
                report.head_seq
            ));
            return Ok((report, own));
        }
        let stored = if seq == 0 {
            None
        } else {
            log::entry(c, seq).await?
        };
        let matches = match (seq, stored) {
            (0, _) => hash == GENESIS_HASH,
            (_, Some(e)) => e.hash == hash,
            (_, None) => false,
        };
        if !matches {
            report.ok = false;
            report.first_bad_seq = Some(seq.max(1));
            report.problem = Some(format!(
                "entry {seq} no longer has the published hash {}: the log was rewritten",
                hex::encode(hash)
            ));
        }
    }
    Ok((report, own))
}

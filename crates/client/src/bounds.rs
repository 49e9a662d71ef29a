//! Bounds on what a server can make the client hold, loop over or verify.
//!
//! CloudStorage is untrusted and the SRS and AccessPolicy are only
//! semi-trusted: none of them decides how much memory or CPU a command
//! costs. Every listing and audit read is bounded per reply and per
//! command, sequence numbers and page tokens must move forward (a server
//! repeating itself cannot loop the client), and the cfrags of a capsule
//! are counted before any proof is checked. Going past a bound fails the
//! command with [`ClientError::Verification`] instead of truncating
//! silently.

use std::borrow::Cow;
use std::collections::HashSet;

use sesphr::proto;

use crate::raw::MeshClients;
use crate::types::listed_record;
use crate::{AuditEntry, ClientError, Record, rpc};

/// Records asked for per `ListRecords` page; a page with more is refused.
pub const LIST_PAGE_SIZE: u32 = 1000;
/// Most records one listing (`Session::list`, `sesphr ls`) returns; a
/// longer listing fails (narrow it with an owner or a partition).
pub const MAX_LIST_RECORDS: usize = 100_000;
/// Most `ListRecords` pages one listing reads (pages may be short: records
/// outside a grant's window are filtered out).
pub const MAX_LIST_PAGES: usize = 1000;
/// Audit entries asked for per `ListAudit` stream; a stream with more is
/// refused.
pub const AUDIT_PAGE: u32 = 1000;
/// Most audit entries one read of the trail (`Session::audit`) returns.
pub const MAX_AUDIT_ENTRIES: usize = 250_000;
/// Most bytes of records or audit entries one listing holds in memory
/// (counted as held: each entry's struct and its text).
pub const MAX_LISTING_BYTES: usize = 128 << 20;
fn refused(msg: String) -> ClientError {
    ClientError::Verification(msg)
}

/// A listing's memory, counted as it grows.
struct Budget {
    bytes: usize,
    what: &'static str,
}

impl Budget {
    fn new(what: &'static str) -> Self {
        Self { bytes: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<(), ClientError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > MAX_LISTING_BYTES {
            return Err(refused(format!(
                "the {} went past the client's bound of {} MiB",
                self.what,
                MAX_LISTING_BYTES >> 20
            )));
        }
        Ok(())
    }
}

fn record_size(m: &proto::RecordMeta) -> usize {
    std::mem::size_of::<Record>()
        + m.record_id.len()
        + m.owner_id.len()
        + m.partition.len()
        + m.record_header.len()
        + m.blob_id.len()
        + m.wrapped_content_key.len()
}

fn audit_size(e: &proto::AuditEntry) -> usize {
    std::mem::size_of::<AuditEntry>()
        + [
            &e.actor,
            &e.action,
            &e.owner_id,
            &e.partition,
            &e.subject,
            &e.record_id,
            &e.outcome,
            &e.detail,
        ]
        .iter()
        .map(|s| s.len())
        .sum::<usize>()
        + e.prev_hash.len()
        + e.hash.len()
}

/// `owner`'s records (`None`: the caller's, `me`), of `partition` if given:
/// every page, each record checked ([`listed_record`]) and the whole
/// listing bounded.
pub(crate) async fn list(
    clients: &MeshClients,
    me: &str,
    owner: Option<&str>,
    partition: Option<&str>,
) -> Result<Vec<Record>, ClientError> {
    let expected_owner = owner.unwrap_or(me);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut budget = Budget::new("record listing");
    let mut token = String::new();
    for _ in 0..MAX_LIST_PAGES {
        let page = clients
            .cloud
            .clone()
            .list_records(tonic::Request::new(proto::ListRecordsRequest {
                owner_id: owner.unwrap_or_default().to_owned(),
                partition: partition.unwrap_or_default().to_owned(),
                page_size: LIST_PAGE_SIZE,
                page_token: token.clone(),
            }))
            .await
            .map_err(rpc("CloudStorage"))?
            .into_inner();
        if page.records.len() > LIST_PAGE_SIZE as usize {
            return Err(refused(format!(
                "CloudStorage sent {} records in one page; {LIST_PAGE_SIZE} were asked for",
                page.records.len()
            )));
        }
        if out.len() + page.records.len() > MAX_LIST_RECORDS {
            return Err(refused(format!(
                "CloudStorage listed more than {MAX_LIST_RECORDS} records (the client's bound); \
                 narrow the listing with an owner or a partition"
            )));
        }
        for meta in page.records {
            budget.take(record_size(&meta))?;
            let rec = listed_record(meta, expected_owner, partition)?;
            if !seen.insert(rec.record_id.clone()) {
                return Err(refused(format!(
                    "CloudStorage listed record {} twice",
                    rec.record_id
                )));
            }
            out.push(rec);
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        if page.next_page_token == token {
            return Err(refused(
                "CloudStorage answered a page token with the same token (the listing would not end)"
                    .into(),
            ));
        }
        token = page.next_page_token;
    }
    Err(refused(format!(
        "CloudStorage's listing did not end within {MAX_LIST_PAGES} pages (the client's bound)"
    )))
}

/// The caller's audit trail: every stream at most [`AUDIT_PAGE`] entries,
/// sequence numbers strictly increasing across the whole read, the whole
/// read bounded in entries and bytes.
pub(crate) async fn audit(clients: &MeshClients) -> Result<Vec<AuditEntry>, ClientError> {
    let mut out = Vec::new();
    let mut budget = Budget::new("audit trail");
    let mut after = 0u64;
    loop {
        let mut stream = clients
            .policy
            .clone()
            .list_audit(tonic::Request::new(proto::ListAuditRequest {
                after_seq: after,
                limit: AUDIT_PAGE,
            }))
            .await
            .map_err(rpc("AccessPolicy"))?
            .into_inner();
        let mut got = 0u32;
        while let Some(e) = stream.message().await.map_err(rpc("AccessPolicy"))? {
            got += 1;
            if got > AUDIT_PAGE {
                return Err(refused(format!(
                    "AccessPolicy sent more than the {AUDIT_PAGE} audit entries asked for in one reply"
                )));
            }
            if e.seq <= after {
                return Err(refused(format!(
                    "AccessPolicy sent audit entry #{} after #{after}: sequence numbers must increase",
                    e.seq
                )));
            }
            if out.len() >= MAX_AUDIT_ENTRIES {
                return Err(refused(format!(
                    "AccessPolicy sent more than {MAX_AUDIT_ENTRIES} audit entries (the client's bound)"
                )));
            }
            budget.take(audit_size(&e))?;
            after = e.seq;
            out.push(AuditEntry::from_proto(e));
        }
        if got == 0 {
            return Ok(out);
        }
    }
}

/// Characters a terminal would act on rather than show: C0/C1 controls
/// (tab, newline, escape, …), DEL, and the bidirectional overrides that
/// reorder what is displayed.
fn unsafe_to_print(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` safe to print on one line of tab-separated output: control and
/// bidirectional-override characters escaped (`\t`, `\n`, `\u{1b}`, …),
/// everything else as is. For text from a server that the SDK cannot check
/// against a syntax (audit entries' free text, messages).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_to_print) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_to_print(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert!(matches!(printable("patient/alice"), Cow::Borrowed(_)));
        assert_eq!(printable("a\tb\nc"), "a\\tb\\nc");
        assert_eq!(printable("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(printable("\u{7f}\u{9b}"), "\\u{7f}\\u{9b}");
        assert_eq!(printable("médical"), "médical");
        for s in ["a\tb", "\r", "\u{85}", "\u{2066}"] {
            let p = printable(s);
            assert!(!p.chars().any(unsafe_to_print), "{p:?}");
        }
    }

    #[test]
    fn budget_refuses_past_the_bound() {
        let mut b = Budget::new("record listing");
        b.take(MAX_LISTING_BYTES).unwrap();
        assert!(b.take(1).is_err());
    }
}

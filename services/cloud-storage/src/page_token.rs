//! Opaque `ListRecords` page tokens.
//!
//! A token is where the next page starts: a position in an owner's index,
//! which names a record id and a partition. A caller who may not see that
//! record must not learn it, so the position is sealed with AES-256-GCM under
//! a key only this store knows, bound (as associated data) to who asked and
//! what they asked for. A token is useless to anyone else, for any other
//! listing, and cannot be forged or edited.
//!
//! `token = hex(nonce (12) ‖ AES-256-GCM(key, nonce, aad, position))` with
//! `aad = "sesphr list token v1" ‖ 0 ‖ caller ‖ 0 ‖ owner ‖ 0 ‖ partition filter`
//! and `position = partition ‖ 0 ‖ record id`.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};

use crate::DomainError;

const AAD_LABEL: &[u8] = b"sesphr list token v1";
const NONCE_LEN: usize = 12;

/// Where a listing stopped: the last index entry it looked at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Empty in a listing by record id (the owner's own, unfiltered).
    pub partition: String,
    pub record_id: String,
}

/// Who asked for which listing: a token opens only for the same request.
#[derive(Debug, Clone, Copy)]
pub struct TokenScope<'a> {
    pub caller: &'a str,
    pub owner_id: &'a str,
    pub partition: Option<&'a str>,
}

impl TokenScope<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = AAD_LABEL.to_vec();
        for part in [self.caller, self.owner_id, self.partition.unwrap_or("")] {
            aad.push(0);
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Seals and opens page tokens.
pub struct PageTokens {
    aead: Aes256Gcm,
}

impl PageTokens {
    pub fn new(key: &[u8; 32]) -> Self {
        PageTokens {
            aead: Aes256Gcm::new(&(*key).into()),
        }
    }

    pub fn seal(&self, scope: &TokenScope<'_>, cursor: &Cursor) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let mut position = cursor.partition.as_bytes().to_vec();
        position.push(0);
        position.extend_from_slice(cursor.record_id.as_bytes());
        let aad = scope.aad();
        let sealed = self
            .aead
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &position,
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any message shorter than 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        hex::encode(out)
    }

    pub fn open(&self, scope: &TokenScope<'_>, token: &str) -> Result<Cursor, DomainError> {
        let bad = || {
            DomainError::Malformed(
                "page_token is not one this server issued for this listing and caller".into(),
            )
        };
        if token.len() > 1024 {
            return Err(bad());
        }
        let raw = hex::decode(token).map_err(|_| bad())?;
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad())?;
        let aad = scope.aad();
        let position = self
            .aead
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| bad())?;
        let split = position.iter().position(|&b| b == 0).ok_or_else(bad)?;
        let partition = String::from_utf8(position[..split].to_vec()).map_err(|_| bad())?;
        let record_id = String::from_utf8(position[split + 1..].to_vec()).map_err(|_| bad())?;
        Ok(Cursor {
            partition,
            record_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope<'a>(caller: &'a str, partition: Option<&'a str>) -> TokenScope<'a> {
        TokenScope {
            caller,
            owner_id: "alice",
            partition,
        }
    }

    #[test]
    fn tokens_open_only_for_their_listing_and_hide_the_position() {
        let tokens = PageTokens::new(&[5; 32]);
        let cursor = Cursor {
            partition: "medical".into(),
            record_id: "rec-0042".into(),
        };
        let t = tokens.seal(&scope("bob", None), &cursor);
        assert!(!t.contains(&hex::encode("rec-0042")) && !t.contains("medical"));
        assert_eq!(tokens.open(&scope("bob", None), &t).unwrap(), cursor);
        // Another caller, filter or server key: refused.
        assert!(tokens.open(&scope("mallory", None), &t).is_err());
        assert!(tokens.open(&scope("bob", Some("medical")), &t).is_err());
        assert!(
            PageTokens::new(&[6; 32])
                .open(&scope("bob", None), &t)
                .is_err()
        );
        // Edited, cut or garbage tokens: refused with one clear message.
        let mut edited = t.clone().into_bytes();
        edited[30] = if edited[30] == b'0' { b'1' } else { b'0' };
        for bad in [
            String::from_utf8(edited).unwrap(),
            t[..t.len() - 2].to_owned(),
            "rec-0042".into(),
            "zz".into(),
            String::new(),
            "a".repeat(5000),
        ] {
            let err = tokens.open(&scope("bob", None), &bad).unwrap_err();
            assert!(
                err.to_string().contains("not one this server issued"),
                "{err}"
            );
        }
        // Two seals of one position differ (fresh nonce).
        assert_ne!(tokens.seal(&scope("bob", None), &cursor), t);
    }
}

//! Secrets sealed under a passphrase: `master.key` and `tls.key` of a
//! protected profile, and backup files.
//!
//! The key is Argon2id (RFC 9106) of the passphrase and a random 16-byte
//! salt, with the cost parameters written in the file; the secret is
//! AES-256-GCM under that key with a random 96-bit nonce, every header line
//! (role included) bound as associated data. A file is text, one field a
//! line, in this order and nothing else:
//!
//! ```text
//! sesphr-sealed-v1
//! role: master.key
//! kdf: argon2id v=19 m=65536 t=3 p=1
//! salt: <base64, 16 bytes>
//! nonce: <base64, 12 bytes>
//! data: <base64, ciphertext and 16-byte tag>
//! sum: <hex SHA-256 of every byte above this line>
//! ```
//!
//! The first line is the magic and the format version; the associated data
//! is the bytes from it through the `nonce` line. The role says what the
//! file holds (`master.key`, `tls.key`, `backup`): a sealed file copied
//! over another is refused, not read as the other. `sum` is a plain,
//! unkeyed checksum: it tells a damaged file ("corrupted") from a wrong
//! passphrase, and nothing more (whoever alters a file on purpose can
//! recompute it; the AEAD tag still refuses their change).
//!
//! Cost: [`KdfParams::INTERACTIVE`] (64 MiB, 3 passes, 1 lane) unless the
//! process runs with `SESPHR_KDF_TEST_PARAMS=1` ([`TEST_PARAMS_ENV`]), which
//! seals with [`KdfParams::INSECURE_TEST`]: for test suites only, a file so
//! sealed falls to a brute-force search thousands of times faster.
//! Readers take the parameters from the file, within bounds
//! ([`KdfParams::check`]: at most 256 MiB, 10 passes, 16 lanes) so that a
//! planted file cannot make a reader spend gigabytes or minutes. A file
//! sealed below [`KdfParams::INTERACTIVE`] still opens (older files must),
//! with a warning ([`weak_params_warning`]) unless the process runs with the
//! test knob.

use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// First line of every sealed file of this format.
pub const MAGIC: &str = "sesphr-sealed-v1";
/// What every sealed file starts with, whatever its version.
const MAGIC_FAMILY: &str = "sesphr-sealed-";
/// The environment variable that, set to `1`, makes this process seal with
/// [`KdfParams::INSECURE_TEST`]. **Insecure**: for test suites only.
pub const TEST_PARAMS_ENV: &str = "SESPHR_KDF_TEST_PARAMS";

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const ARGON2_VERSION: u32 = 0x13;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes (parallelism).
    pub p: u32,
}

impl KdfParams {
    /// What profiles and backups are sealed with: 64 MiB, 3 passes, 1 lane
    /// (RFC 9106's second recommended option, with one lane: one derivation
    /// takes about 0.12 s on one core of the machines this is built on; see
    /// docs/recovery.md for the measured cost of guessing).
    pub const INTERACTIVE: Self = Self {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// 256 KiB, 1 pass: **insecure**, for test suites (see
    /// [`TEST_PARAMS_ENV`]).
    pub const INSECURE_TEST: Self = Self {
        m_kib: 256,
        t: 1,
        p: 1,
    };
    /// The most memory a reader spends on one file (256 MiB).
    pub const MAX_M_KIB: u32 = 256 * 1024;
    /// The most passes a reader makes.
    pub const MAX_T: u32 = 10;
    /// The most lanes a reader accepts.
    pub const MAX_P: u32 = 16;

    /// The parameters this process seals with: [`Self::INTERACTIVE`], or
    /// [`Self::INSECURE_TEST`] when `SESPHR_KDF_TEST_PARAMS=1`.
    pub fn for_sealing() -> Self {
        if Self::test_params_requested() {
            Self::INSECURE_TEST
        } else {
            Self::INTERACTIVE
        }
    }

    /// Whether `SESPHR_KDF_TEST_PARAMS=1` is set in this process.
    pub fn test_params_requested() -> bool {
        std::env::var_os(TEST_PARAMS_ENV).is_some_and(|v| v == "1")
    }

    /// Whether these are below [`Self::INTERACTIVE`] in any parameter.
    pub fn is_weaker_than_interactive(&self) -> bool {
        self.m_kib < Self::INTERACTIVE.m_kib || self.t < Self::INTERACTIVE.t
    }

    /// Within what Argon2 allows and what a reader is willing to spend.
    pub fn check(&self) -> Result<(), SealError> {
        let ok = (1..=Self::MAX_P).contains(&self.p)
            && (1..=Self::MAX_T).contains(&self.t)
            && self.m_kib >= 8 * self.p
            && self.m_kib <= Self::MAX_M_KIB;
        if ok {
            Ok(())
        } else {
            Err(SealError::Corrupt(format!(
                "Argon2id parameters m={} t={} p={} are out of range",
                self.m_kib, self.t, self.p
            )))
        }
    }

    fn header(&self) -> String {
        format!(
            "argon2id v={ARGON2_VERSION} m={} t={} p={}",
            self.m_kib, self.t, self.p
        )
    }

    fn parse(text: &str) -> Result<Self, SealError> {
        let bad = || SealError::Corrupt(format!("unreadable kdf line {text:?}"));
        let mut parts = text.split(' ');
        if parts.next() != Some("argon2id") {
            return Err(SealError::Corrupt(format!(
                "unknown key derivation {text:?} (only argon2id)"
            )));
        }
        let mut field = |name: &str| -> Result<u32, SealError> {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)
        };
        let version = field("v")?;
        let params = Self {
            m_kib: field("m")?,
            t: field("t")?,
            p: field("p")?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        if version != ARGON2_VERSION {
            return Err(SealError::Corrupt(format!(
                "Argon2 version {version} (only {ARGON2_VERSION})"
            )));
        }
        params.check()?;
        Ok(params)
    }
}

/// A passphrase, zeroized when its last copy drops, redacted in `Debug`,
/// with the cost it seals under ([`KdfParams::for_sealing`] unless set).
#[derive(Clone)]
pub struct Passphrase {
    secret: Arc<Zeroizing<String>>,
    kdf: KdfParams,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Wraps `secret`, used exactly as given (no trimming, no
    /// normalisation).
    pub fn new(secret: Zeroizing<String>) -> Self {
        Self {
            secret: Arc::new(secret),
            kdf: KdfParams::for_sealing(),
        }
    }

    /// The same passphrase, sealing with `kdf`.
    pub fn with_kdf(mut self, kdf: KdfParams) -> Self {
        self.kdf = kdf;
        self
    }

    /// What it seals with.
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    /// Whether it is empty (nothing is sealed under an empty passphrase).
    pub fn is_empty(&self) -> bool {
        self.secret.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        self.secret.as_bytes()
    }
}

/// Why a sealed file was not opened (or a secret not sealed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The checksum matches but the tag does not verify: the passphrase is
    /// not the one the file was sealed under (or the file was altered on
    /// purpose, checksum included).
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The file is damaged or not what it claims to be.
    #[error("corrupted: {0}")]
    Corrupt(String),
    /// A sealed file of a later format.
    #[error("sealed in format {0}, which this version of sesphr does not read")]
    UnknownVersion(String),
    /// A sealed file of another role (e.g. a tls.key copied onto master.key).
    #[error("it holds a sealed {found}, not a {expected}")]
    WrongRole {
        /// What the reader expected.
        expected: String,
        /// What the file says it holds.
        found: String,
    },
    /// Not a sealed file at all.
    #[error("not a sealed file")]
    NotSealed,
    /// Sealing needs a passphrase.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

/// Whether `bytes` are a sealed file (of any version).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC_FAMILY.as_bytes())
}

fn derive_key(
    passphrase: &Passphrase,
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| SealError::Corrupt(format!("Argon2id parameters: {e}")))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.bytes(), salt, &mut key[..])
        .map_err(|e| SealError::Corrupt(format!("Argon2id: {e}")))?;
    Ok(key)
}

/// Seals `plaintext` as a file of `role` under `passphrase` (at its
/// [`Passphrase::kdf`] cost, fresh salt and nonce).
pub fn seal(role: &str, plaintext: &[u8], passphrase: &Passphrase) -> Result<String, SealError> {
    if passphrase.is_empty() {
        return Err(SealError::EmptyPassphrase);
    }
    assert!(
        !role.is_empty() && role.bytes().all(|b| b.is_ascii_graphic()),
        "a role is one printable word"
    );
    let params = passphrase.kdf;
    params.check()?;
    let mut rng = rand::rng();
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let header = format!(
        "{MAGIC}\nrole: {role}\nkdf: {}\nsalt: {}\nnonce: {}\n",
        params.header(),
        B64.encode(salt),
        B64.encode(nonce)
    );
    let key = derive_key(passphrase, &salt, params)?;
    let ct = Aes256Gcm::new(&(*key).into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: header.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of a small secret cannot fail");
    let mut text = header;
    text.push_str("data: ");
    text.push_str(&B64.encode(ct));
    text.push('\n');
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str("sum: ");
    text.push_str(&sum);
    text.push('\n');
    Ok(text)
}

/// A sealed file's fields, checked for shape and checksum (not yet opened).
struct Parsed<'a> {
    aad: &'a [u8],
    role: &'a str,
    params: KdfParams,
    salt: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, SealError> {
    if !is_sealed(bytes) {
        return Err(SealError::NotSealed);
    }
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    if first != MAGIC.as_bytes() {
        let version = String::from_utf8_lossy(first);
        return Err(SealError::UnknownVersion(
            crate::printable(&version).into_owned(),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| SealError::Corrupt("not text (the file is damaged)".into()))?;
    let corrupt = |what: &str| SealError::Corrupt(what.to_owned());
    // The checksum first: any damaged byte is "corrupted", not a wrong
    // passphrase.
    let body_end = text
        .rfind("sum: ")
        .filter(|&i| i > 0 && text.as_bytes()[i - 1] == b'\n')
        .ok_or_else(|| corrupt("the checksum line is missing (truncated?)"))?;
    let (body, sum_line) = text.split_at(body_end);
    let sum = sum_line
        .strip_prefix("sum: ")
        .and_then(|s| s.strip_suffix('\n'))
        .ok_or_else(|| corrupt("the checksum line is damaged (truncated?)"))?;
    if sum != hex::encode(Sha256::digest(body.as_bytes())) {
        return Err(corrupt("its checksum does not match (the file is damaged)"));
    }
    let mut lines = body.split_inclusive('\n');
    // The magic line was checked above.
    let _magic = lines.next();
    let mut aad_len = MAGIC.len() + 1;
    let mut field = |name: &str| -> Result<(&str, usize), SealError> {
        let line = lines
            .next()
            .ok_or_else(|| SealError::Corrupt(format!("no {name} line")))?;
        let len = line.len();
        line.strip_suffix('\n')
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(": "))
            .map(|v| (v, len))
            .ok_or_else(|| SealError::Corrupt(format!("expected the {name} line")))
    };
    let mut header = |name: &str| -> Result<&str, SealError> {
        let (value, len) = field(name)?;
        aad_len += len;
        Ok(value)
    };
    let role = header("role")?;
    let params = KdfParams::parse(header("kdf")?)?;
    let salt = B64
        .decode(header("salt")?)
        .map_err(|_| corrupt("the salt is not base64"))?;
    let nonce: [u8; NONCE_LEN] = B64
        .decode(header("nonce")?)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt("the nonce is not 12 bytes of base64"))?;
    let aad_end = aad_len;
    let ciphertext = B64
        .decode(field("data")?.0)
        .map_err(|_| corrupt("the data is not base64"))?;
    if lines.next().is_some() {
        return Err(corrupt("unexpected lines"));
    }
    if !(8..=64).contains(&salt.len()) {
        return Err(corrupt("the salt has a bad length"));
    }
    Ok(Parsed {
        aad: &bytes[..aad_end],
        role,
        params,
        salt,
        nonce,
        ciphertext,
    })
}

/// The Argon2id parameters a sealed file was sealed with.
pub fn params_of(bytes: &[u8]) -> Result<KdfParams, SealError> {
    Ok(parse(bytes)?.params)
}

/// The warning a sealed file deserves when its parameters are below
/// [`KdfParams::INTERACTIVE`] (a guess at its passphrase costs less than
/// this version asks for), unless `SESPHR_KDF_TEST_PARAMS=1` is set; `None`
/// for files sealed at full cost and for what is not a sealed file. Such a
/// file still opens; re-sealing it (a change of passphrase, a new backup)
/// brings it to full cost.
pub fn weak_params_warning(bytes: &[u8]) -> Option<String> {
    let params = params_of(bytes).ok()?;
    weak_warning(params, KdfParams::test_params_requested())
}

fn weak_warning(params: KdfParams, test_knob: bool) -> Option<String> {
    (!test_knob && params.is_weaker_than_interactive()).then(|| {
        format!(
            "sealed with weak Argon2id parameters (m={} t={} p={}, below m={} t={}): a \
             passphrase guess costs less than it should; seal it again",
            params.m_kib,
            params.t,
            params.p,
            KdfParams::INTERACTIVE.m_kib,
            KdfParams::INTERACTIVE.t
        )
    })
}

/// Opens a sealed file of `role` with `passphrase` (logging, through
/// `tracing`, the warning of [`weak_params_warning`] if it has one).
pub fn open(
    role: &str,
    bytes: &[u8],
    passphrase: &Passphrase,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let p = parse(bytes)?;
    if let Some(warning) = weak_warning(p.params, KdfParams::test_params_requested()) {
        tracing::warn!(role = %crate::printable(p.role), "{warning}");
    }
    if p.role != role {
        return Err(SealError::WrongRole {
            expected: role.to_owned(),
            found: crate::printable(p.role).into_owned(),
        });
    }
    let key = derive_key(passphrase, &p.salt, p.params)?;
    let plain = Aes256Gcm::new(&(*key).into())
        .decrypt(
            &p.nonce.into(),
            Payload {
                msg: &p.ciphertext,
                aad: p.aad,
            },
        )
        .map_err(|_| SealError::WrongPassphrase)?;
    Ok(Zeroizing::new(plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(s.to_owned())).with_kdf(KdfParams::INSECURE_TEST)
    }

    #[test]
    fn a_sealed_secret_opens_with_its_passphrase_and_role() {
        let text = seal("master.key", b"secret bytes", &pass("correct horse")).unwrap();
        assert!(
            text.starts_with(
                "sesphr-sealed-v1\nrole: master.key\nkdf: argon2id v=19 m=256 t=1 p=1\n"
            )
        );
        assert!(is_sealed(text.as_bytes()));
        assert_eq!(
            params_of(text.as_bytes()).unwrap(),
            KdfParams::INSECURE_TEST
        );
        let plain = open("master.key", text.as_bytes(), &pass("correct horse")).unwrap();
        assert_eq!(plain.as_slice(), b"secret bytes");
        // Fresh salt and nonce each time.
        let again = seal("master.key", b"secret bytes", &pass("correct horse")).unwrap();
        assert_ne!(text, again);
        assert!(!format!("{:?}", pass("correct horse")).contains("horse"));
    }

    #[test]
    fn a_wrong_passphrase_is_told_apart_from_damage() {
        let text = seal("backup", b"x", &pass("one")).unwrap();
        assert_eq!(
            open("backup", text.as_bytes(), &pass("two")).unwrap_err(),
            SealError::WrongPassphrase
        );
        assert_eq!(
            seal("backup", b"x", &pass("")).unwrap_err(),
            SealError::EmptyPassphrase
        );
    }

    #[test]
    fn every_damaged_byte_is_refused_as_corrupted() {
        let text = seal("backup", b"some secret", &pass("pw")).unwrap();
        let bytes = text.as_bytes();
        // Flip each byte after the magic (a damaged magic is "not sealed"
        // or "unknown version").
        for i in MAGIC.len() + 1..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x01;
            let err = open("backup", &bad, &pass("pw")).unwrap_err();
            assert!(matches!(err, SealError::Corrupt(_)), "byte {i}: {err:?}");
        }
        // Truncated anywhere.
        for len in [0, 10, MAGIC.len() + 1, bytes.len() / 2, bytes.len() - 1] {
            let err = open("backup", &bytes[..len], &pass("pw")).unwrap_err();
            assert!(
                matches!(err, SealError::Corrupt(_) | SealError::NotSealed),
                "{len}: {err:?}"
            );
        }
    }

    #[test]
    fn a_tampered_file_with_a_recomputed_checksum_still_fails() {
        let text = seal("master.key", b"k", &pass("pw")).unwrap();
        let resum = |body: String| {
            let body = &body[..body.rfind("sum: ").unwrap()];
            format!(
                "{body}sum: {}\n",
                hex::encode(Sha256::digest(body.as_bytes()))
            )
        };
        // Another role, checksum made to fit: the role is bound by the AEAD.
        let swapped = resum(text.replace("role: master.key", "role: tls.key"));
        assert_eq!(
            open("tls.key", swapped.as_bytes(), &pass("pw")).unwrap_err(),
            SealError::WrongPassphrase
        );
        assert!(matches!(
            open("tls.key", text.as_bytes(), &pass("pw")).unwrap_err(),
            SealError::WrongRole { .. }
        ));
        // Cheaper parameters, checksum made to fit: another key entirely.
        let cheaper = resum(text.replace("m=256", "m=64"));
        assert_eq!(
            open("master.key", cheaper.as_bytes(), &pass("pw")).unwrap_err(),
            SealError::WrongPassphrase
        );
    }

    #[test]
    fn unknown_versions_and_costly_parameters_are_refused() {
        let text = seal("backup", b"x", &pass("pw")).unwrap();
        let v2 = text.replacen("sesphr-sealed-v1", "sesphr-sealed-v2", 1);
        assert_eq!(
            open("backup", v2.as_bytes(), &pass("pw")).unwrap_err(),
            SealError::UnknownVersion("sesphr-sealed-v2".into())
        );
        assert_eq!(
            open("backup", b"deadbeef", &pass("pw")).unwrap_err(),
            SealError::NotSealed
        );
        for kdf in [
            "argon2id v=19 m=4194304 t=3 p=1",
            "argon2id v=19 m=65536 t=1000 p=1",
            "argon2id v=19 m=65536 t=3 p=0",
            "argon2id v=16 m=65536 t=3 p=1",
            "argon2i v=19 m=65536 t=3 p=1",
            "argon2id v=19 m=65536 t=3",
        ] {
            let err = KdfParams::parse(kdf).unwrap_err();
            assert!(matches!(err, SealError::Corrupt(_)), "{kdf}: {err:?}");
        }
        assert_eq!(
            KdfParams::parse("argon2id v=19 m=65536 t=3 p=1").unwrap(),
            KdfParams::INTERACTIVE
        );
        // At most 256 MiB, 10 passes, 16 lanes.
        for kdf in [
            "argon2id v=19 m=262145 t=3 p=1",
            "argon2id v=19 m=2097152 t=3 p=1",
            "argon2id v=19 m=65536 t=11 p=1",
            "argon2id v=19 m=65536 t=64 p=1",
            "argon2id v=19 m=65536 t=3 p=17",
        ] {
            let err = KdfParams::parse(kdf).unwrap_err();
            assert!(matches!(err, SealError::Corrupt(_)), "{kdf}: {err:?}");
        }
        assert!(KdfParams::parse("argon2id v=19 m=262144 t=10 p=16").is_ok());
    }

    #[test]
    fn files_below_the_interactive_cost_open_with_a_warning() {
        let weak = seal("backup", b"x", &pass("pw")).unwrap();
        assert_eq!(
            open("backup", weak.as_bytes(), &pass("pw"))
                .unwrap()
                .as_slice(),
            b"x"
        );
        let warning = weak_warning(KdfParams::INSECURE_TEST, false).unwrap();
        assert!(warning.contains("m=256 t=1 p=1"), "{warning}");
        // Not under the test knob, not at full cost, not for other files.
        assert_eq!(weak_warning(KdfParams::INSECURE_TEST, true), None);
        assert_eq!(weak_warning(KdfParams::INTERACTIVE, false), None);
        let fewer_passes = KdfParams {
            t: 2,
            ..KdfParams::INTERACTIVE
        };
        assert!(weak_warning(fewer_passes, false).is_some());
        assert_eq!(weak_params_warning(b"deadbeef"), None);
    }
}

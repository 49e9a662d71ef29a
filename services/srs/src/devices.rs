//! A user's devices: one per enrolment of the id (the first, and each
//! re-enrolment: a restore, a phrase or trustee recovery, a second
//! machine). Each device holds its own TLS key; the certificates the SRS
//! issues name the device in their subject (`sesphr_mesh::trust::device`),
//! so removing a device revokes every certificate it ever got with one
//! deny-list entry (user, device, until its last certificate expires).
//!
//! These are the pure rules on a user's device list; the setup service
//! ([`crate::setup`]) applies them inside the store's atomic updates.

use sesphr_domain::DomainError;

/// Most devices a user has at once (not removed).
pub const MAX_ACTIVE_DEVICES: usize = 16;
/// Most device records kept per user, removed ones included (a removed
/// device is forgotten once its last certificate has expired).
pub const MAX_DEVICE_RECORDS: usize = 64;
pub use sesphr_identity::MAX_DEVICE_NAME_LEN;

/// One device of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// 1 to [`MAX_DEVICE_NAME_LEN`] of `[a-z0-9-]`, unique among the
    /// user's records.
    pub name: String,
    /// When it was enrolled (unix seconds).
    pub added_at: i64,
    /// `notBefore` of the newest certificate issued to it: an older one
    /// was superseded and renews nothing.
    pub issued_at: i64,
    /// The latest `notAfter` of its certificates.
    pub not_after: i64,
    /// When it was removed; 0 while it is not.
    pub removed_at: i64,
}

impl DeviceRecord {
    /// Whether it is still one of the user's devices.
    pub fn is_active(&self) -> bool {
        self.removed_at == 0
    }
}

/// Checks a device name's syntax (the mesh's one rule,
/// [`sesphr_identity::validate_device_name`]).
pub fn validate_name(name: &str) -> Result<(), DomainError> {
    sesphr_identity::validate_device_name(name).map_err(|e| DomainError::Malformed(e.to_string()))
}

/// The name a new device gets when it asks for none: the first free
/// `device-N`.
pub fn default_name(devices: &[DeviceRecord]) -> String {
    (1..)
        .map(|n| format!("device-{n}"))
        .find(|name| devices.iter().all(|d| d.name != *name))
        .expect("some device-N is free")
}

/// Forgets removed devices whose certificates have all expired by `now`.
pub fn prune(devices: &mut Vec<DeviceRecord>, now: i64) {
    devices.retain(|d| d.is_active() || d.not_after > now);
}

/// Adds `device` (a new enrolment), after pruning; refuses a name in use
/// (a removed device's name stays taken while its certificates live, since
/// they are revoked by that name) and a user at the limits.
pub fn add(devices: &mut Vec<DeviceRecord>, device: DeviceRecord) -> Result<(), DomainError> {
    validate_name(&device.name)?;
    prune(devices, device.added_at);
    if let Some(same) = devices.iter().find(|d| d.name == device.name) {
        return Err(DomainError::Exists(if same.is_active() {
            format!(
                "there is a device {} already; choose another name",
                device.name
            )
        } else {
            format!(
                "device name {} belonged to a removed device whose certificates are revoked \
                 until {}; choose another name",
                device.name, same.not_after
            )
        }));
    }
    if devices.iter().filter(|d| d.is_active()).count() >= MAX_ACTIVE_DEVICES {
        return Err(DomainError::UsedUp(format!(
            "at most {MAX_ACTIVE_DEVICES} devices at once; remove one first"
        )));
    }
    if devices.len() >= MAX_DEVICE_RECORDS {
        return Err(DomainError::UsedUp(format!(
            "too many recently removed devices (at most {MAX_DEVICE_RECORDS} kept); retry once \
             their certificates have expired"
        )));
    }
    devices.push(device);
    Ok(())
}

/// The active device called `name`, or why there is none.
pub fn active<'a>(
    devices: &'a mut [DeviceRecord],
    user_id: &str,
    name: &str,
) -> Result<&'a mut DeviceRecord, DomainError> {
    match devices.iter_mut().find(|d| d.name == name) {
        Some(d) if d.is_active() => Ok(d),
        Some(d) => Err(DomainError::NotEntitled(format!(
            "device {name} of {user_id} was removed at {} (unix seconds)",
            d.removed_at
        ))),
        None => Err(DomainError::NotEntitled(format!(
            "{user_id} has no device {name}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, not_after: i64) -> DeviceRecord {
        DeviceRecord {
            name: name.into(),
            added_at: 10,
            issued_at: 10,
            not_after,
            removed_at: 0,
        }
    }

    #[test]
    fn names_are_checked_and_defaulted() {
        for bad in ["", "Laptop", "a b", "x/y", &"a".repeat(33), "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("laptop-2").unwrap();
        let huge = "x".repeat(1 << 20);
        let Err(DomainError::Malformed(m)) = validate_name(&huge) else {
            panic!("a huge name passed");
        };
        assert!(m.len() < 200, "{m}");
        let mut list = vec![device("device-1", 100), device("device-3", 100)];
        assert_eq!(default_name(&list), "device-2");
        add(&mut list, device("device-2", 100)).unwrap();
        assert_eq!(default_name(&list), "device-4");
    }

    #[test]
    fn a_removed_name_stays_taken_while_its_certificates_live() {
        let mut list = vec![device("laptop", 100)];
        list[0].removed_at = 20;
        let again = |added_at| DeviceRecord {
            added_at,
            ..device("laptop", 500)
        };
        assert!(matches!(
            add(&mut list, again(50)),
            Err(DomainError::Exists(_))
        ));
        // Once its certificates have expired it is forgotten.
        add(&mut list, again(100)).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].is_active());
    }

    #[test]
    fn limits_hold() {
        let mut list = Vec::new();
        for i in 0..MAX_ACTIVE_DEVICES {
            add(&mut list, device(&format!("d{i}"), 100)).unwrap();
        }
        assert!(matches!(
            add(&mut list, device("one-more", 100)),
            Err(DomainError::UsedUp(_))
        ));
        assert!(active(&mut list, "alice", "d3").is_ok());
        list[3].removed_at = 50;
        assert!(active(&mut list, "alice", "d3").is_err());
        assert!(active(&mut list, "alice", "nope").is_err());
    }
}

//! Names as types: a [`UserId`], [`RecordId`] or [`PartitionName`] exists
//! only if its text passed the one syntax check in [`crate::names`], so code
//! that holds one never checks it again.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use crate::IdentityError;
use crate::names::{validate_partition, validate_record_id, validate_user_id};

macro_rules! checked_name {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks the syntax; the error quotes (the start of) the input.
            pub fn parse(text: impl Into<String>) -> Result<Self, IdentityError> {
                let text = text.into();
                $check(&text)?;
                Ok(Self(text))
            }

            /// The checked text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The checked text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdentityError;

            fn from_str(text: &str) -> Result<Self, IdentityError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdentityError;

            fn try_from(text: String) -> Result<Self, IdentityError> {
                Self::parse(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdentityError;

            fn try_from(text: &str) -> Result<Self, IdentityError> {
                Self::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_name!(
    /// A patient's, practitioner's or operator's id: `[a-z0-9][a-z0-9._-]{0,63}`.
    UserId,
    validate_user_id
);
checked_name!(
    /// A record's id: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
    RecordId,
    validate_record_id
);
checked_name!(
    /// A partition's name (`medical`, `insurance`, …): `[a-z0-9-]{1,32}`.
    PartitionName,
    validate_partition
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_applies_its_own_syntax() {
        assert_eq!(UserId::parse("alice").unwrap(), "alice");
        assert!(UserId::parse("Alice").is_err());
        assert!(RecordId::parse("Rec-1").is_ok());
        assert!(PartitionName::parse("Rec-1").is_err());
        assert_eq!(PartitionName::parse("medical").unwrap().as_str(), "medical");
        assert!("../x".parse::<RecordId>().is_err());
        let id: UserId = "bob".parse().unwrap();
        assert_eq!(id.len(), 3, "derefs to str");
        assert_eq!(String::from(id), "bob");
    }
}

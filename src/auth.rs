//! Client credentials: decoding the SASL responses warren accepts and the
//! salted fingerprint that keys the upstream pools.
//!
//! warren never decides whether a password is right; the broker does. A
//! client is let in only when an upstream connection opened with exactly its
//! credentials exists or can be opened now. The fingerprint lets the pool find
//! that connection without keeping a comparable plaintext around, and is
//! compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::protocol::wire::{decode_table_entries, table_get, FieldValue};

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
    #[error("malformed {0} response")]
    Malformed(&'static str),
}

impl Credentials {
    /// Decodes a Start-Ok response for `mechanism`.
    pub fn decode(mechanism: &str, response: &[u8]) -> Result<Self, AuthError> {
        match mechanism {
            "PLAIN" => Self::decode_plain(response),
            "AMQPLAIN" => Self::decode_amqplain(response),
            other => Err(AuthError::UnknownMechanism(other.to_string())),
        }
    }

    /// PLAIN is `authzid NUL authcid NUL password`; the authzid is ignored,
    /// as RabbitMQ does.
    fn decode_plain(response: &[u8]) -> Result<Self, AuthError> {
        let mut parts = response.splitn(3, |b| *b == 0);
        let (_, user, password) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(u), Some(p)) => (a, u, p),
            _ => return Err(AuthError::Malformed("PLAIN")),
        };
        Ok(Credentials {
            user: String::from_utf8(user.to_vec()).map_err(|_| AuthError::Malformed("PLAIN"))?,
            password: Zeroizing::new(
                String::from_utf8(password.to_vec()).map_err(|_| AuthError::Malformed("PLAIN"))?,
            ),
        })
    }

    /// AMQPLAIN is a field table without its length prefix: LOGIN, PASSWORD.
    fn decode_amqplain(response: &[u8]) -> Result<Self, AuthError> {
        let table = decode_table_entries(response).map_err(|_| AuthError::Malformed("AMQPLAIN"))?;
        let text = |key| match table_get(&table, key) {
            Some(FieldValue::LongStr(v)) => String::from_utf8(v.clone()).ok(),
            _ => None,
        };
        match (text("LOGIN"), text("PASSWORD")) {
            (Some(user), Some(password)) => Ok(Credentials {
                user,
                password: Zeroizing::new(password),
            }),
            _ => Err(AuthError::Malformed("AMQPLAIN")),
        }
    }

    /// The PLAIN response warren sends upstream with these credentials.
    pub fn plain_response(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            self.user.len() + self.password.len() + 2,
        ));
        out.push(0);
        out.extend_from_slice(self.user.as_bytes());
        out.push(0);
        out.extend_from_slice(self.password.as_bytes());
        out
    }
}

/// A per-process random salt, so fingerprints are useless outside this process.
#[derive(Clone)]
pub struct Salt([u8; 32]);

impl Salt {
    pub fn random() -> Self {
        let mut salt = [0u8; 32];
        getrandom::getrandom(&mut salt).expect("the OS random source is available");
        Salt(salt)
    }
}

/// Salted SHA-256 of a password.
#[derive(Clone)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(salt: &Salt, password: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(salt.0);
        hasher.update(password.as_bytes());
        Fingerprint(hasher.finalize().into())
    }

    pub fn matches(&self, other: &Fingerprint) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::put_table;
    use bytes::BytesMut;

    #[test]
    fn decodes_plain_and_amqplain() {
        let plain = Credentials::decode("PLAIN", b"\0guest\0pa\0ss").unwrap();
        assert_eq!(
            (plain.user.as_str(), plain.password.as_str()),
            ("guest", "pa\0ss")
        );

        let mut buf = BytesMut::new();
        put_table(
            &mut buf,
            &vec![
                ("LOGIN".into(), FieldValue::LongStr(b"app".to_vec())),
                ("PASSWORD".into(), FieldValue::LongStr(b"secret".to_vec())),
            ],
        );
        let amqplain = Credentials::decode("AMQPLAIN", &buf[4..]).unwrap();
        assert_eq!(
            (amqplain.user.as_str(), amqplain.password.as_str()),
            ("app", "secret")
        );
    }

    #[test]
    fn rejects_unknown_mechanisms_and_garbage() {
        assert_eq!(
            Credentials::decode("EXTERNAL", b"").unwrap_err(),
            AuthError::UnknownMechanism("EXTERNAL".into())
        );
        assert_eq!(
            Credentials::decode("PLAIN", b"guest").unwrap_err(),
            AuthError::Malformed("PLAIN")
        );
        assert_eq!(
            Credentials::decode("AMQPLAIN", b"\x05LOGIN").unwrap_err(),
            AuthError::Malformed("AMQPLAIN")
        );
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let creds = Credentials::decode("PLAIN", b"\0u\0hunter2").unwrap();
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn fingerprints_depend_on_salt_and_password() {
        let salt = Salt::random();
        let a = Fingerprint::of(&salt, "guest");
        assert!(a.matches(&Fingerprint::of(&salt, "guest")));
        assert!(!a.matches(&Fingerprint::of(&salt, "guest2")));
        assert!(!a.matches(&Fingerprint::of(&Salt::random(), "guest")));
    }
}

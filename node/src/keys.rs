//! Validator key files: a secp256k1 secret key in hex, readable by its owner only.
//!
//! The secret never leaves this module except as bytes written to the key file: `Debug` shows the
//! public key, and nothing here formats the secret into a string that could reach a log.

use crate::cli::KeygenArgs;
use alloy_primitives::Address;
use rand::Rng;
use secp256k1::{PublicKey, SECP256K1, SecretKey};
use std::{
    fmt,
    fs::OpenOptions,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};

/// Mode of a key file: the owner reads and writes it, nobody else can.
pub const KEY_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: already exists; refusing to overwrite a validator key")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a secp256k1 secret key in hex ({reason})")]
    Invalid { path: PathBuf, reason: &'static str },
    #[error(
        "{path}: mode {mode:03o} lets other users read the validator key; run `chmod 600 {path}`"
    )]
    Readable { path: PathBuf, mode: u32 },
}

/// A validator's secret key.
pub struct ValidatorKey {
    secret: SecretKey,
}

impl ValidatorKey {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        loop {
            // Fewer than 1 in 2^127 draws is out of range (zero or ≥ the curve order).
            if let Ok(secret) = SecretKey::from_byte_array(&rng.random()) {
                return Self { secret };
            }
        }
    }

    pub fn public_key(&self) -> ValidatorPubkey {
        ValidatorPubkey(PublicKey::from_secret_key(SECP256K1, &self.secret))
    }

    pub fn address(&self) -> Address {
        self.public_key().address()
    }

    /// The secret, for the consensus signer and the transport handshake; never format it.
    pub fn secret_key(&self) -> SecretKey {
        self.secret
    }

    /// Writes the key to a new file with mode 0600; an existing file is never replaced.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_FILE_MODE)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => KeyError::Exists {
                    path: path.to_owned(),
                },
                _ => io_err(e),
            })?;
        let hex = alloy_primitives::hex::encode(self.secret.secret_bytes());
        file.write_all(hex.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(io_err)
    }

    /// Reads a key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(io_err)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Readable {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_err)?;
        let invalid = |reason| KeyError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let text = text.trim();
        let hex = text.strip_prefix("0x").unwrap_or(text);
        let mut bytes = [0u8; 32];
        alloy_primitives::hex::decode_to_slice(hex, &mut bytes)
            .map_err(|_| invalid("expected 64 hex digits"))?;
        let secret =
            SecretKey::from_byte_array(&bytes).map_err(|_| invalid("out of the curve's range"))?;
        Ok(Self { secret })
    }
}

/// `kestrel keygen`: writes a new key and prints its public key and address, never the secret.
pub fn keygen(args: &KeygenArgs) -> Result<(), KeyError> {
    let key = ValidatorKey::generate();
    key.write_new(&args.out)?;
    println!("wrote {} (mode 0600)", args.out.display());
    println!("public key: {}", key.public_key());
    println!("address:    {}", key.address());
    Ok(())
}

impl fmt::Debug for ValidatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatorKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// A validator's identity: its compressed secp256k1 public key (33 bytes, `0x`-hex in files).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValidatorPubkey(PublicKey);

impl ValidatorPubkey {
    /// The Ethereum address of the key, as for an account.
    pub fn address(&self) -> Address {
        Address::from_raw_public_key(&self.0.serialize_uncompressed()[1..])
    }

    /// The compressed encoding, as consensus and the transport name validators.
    pub fn to_bytes(self) -> [u8; 33] {
        self.0.serialize()
    }
}

impl fmt::Display for ValidatorPubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", alloy_primitives::hex::encode(self.0.serialize()))
    }
}

impl fmt::Debug for ValidatorPubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ValidatorPubkey {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("0x").unwrap_or(s);
        let mut bytes = [0u8; 33];
        alloy_primitives::hex::decode_to_slice(hex, &mut bytes)
            .map_err(|_| "expected a compressed public key: 66 hex digits")?;
        PublicKey::from_slice(&bytes)
            .map(Self)
            .map_err(|_| "not a point on secp256k1")
    }
}

impl serde::Serialize for ValidatorPubkey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ValidatorPubkey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_its_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validator.key");
        let key = ValidatorKey::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, KEY_FILE_MODE);
        let loaded = ValidatorKey::load(&path).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(matches!(
            ValidatorKey::generate().write_new(&path),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(ValidatorKey::load(&path).unwrap().address(), key.address());
    }

    #[test]
    fn readable_or_malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "zz").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ValidatorKey::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Readable { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = ValidatorKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err}");
    }

    #[test]
    fn address_matches_the_account_derivation() {
        // Hardhat account 0: the same secret as a validator key gives the same address.
        let (address, secret) = kestrel_types::chain::dev_accounts()[0];
        let key = ValidatorKey {
            secret: SecretKey::from_byte_array(&secret.0).unwrap(),
        };
        assert_eq!(key.address(), address);
        let pubkey = key.public_key();
        assert_eq!(pubkey.to_string().parse::<ValidatorPubkey>(), Ok(pubkey));
        assert!(format!("{key:?}").contains(&pubkey.to_string()));
        assert!(!format!("{key:?}").contains(&alloy_primitives::hex::encode(secret)));
    }
}

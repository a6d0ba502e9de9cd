//! Validator keys: a secp256k1 secret in an encrypted keystore (Ethereum keystore v3, see
//! `keystore.rs`), opened with a password read from a password file. The keystore and the
//! password file must be readable by their owner only: the node refuses either if its group or
//! other users can read it.
//!
//! A plain hex key file (what `keygen` wrote before keystores) is still accepted so existing
//! validators keep starting, but with a warning at every start that names the command converting
//! it (`kestrel keygen --from-hex`); the same mode rule applies to it.
//!
//! The secret never leaves this module except encrypted into a keystore: `Debug` shows the public
//! key, and nothing here formats the secret into a string that could reach a log.

use crate::{
    cli::KeygenArgs,
    keystore::{self, KeystoreError, ScryptParams},
};
use alloy_primitives::Address;
use rand::Rng;
use secp256k1::{PublicKey, SECP256K1, SecretKey};
use std::{
    fmt,
    fs::OpenOptions,
    io::{self, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};
use zeroize::Zeroizing;

/// Mode of a key or password file: the owner reads and writes it, nobody else can.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Largest key file read (a keystore is under 1 KiB): a wrong path cannot make the node read a
/// disk image into memory.
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Largest password file read.
pub const PASSWORD_FILE_BYTES_MAX: u64 = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: already exists; refusing to overwrite a validator key")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a keystore nor a secp256k1 secret key in hex ({reason})")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: mode {mode:03o} lets other users read {what}; run `chmod 600 {path}`")]
    Readable {
        path: PathBuf,
        mode: u32,
        what: &'static str,
    },
    #[error("{path}: over {max} bytes, too large to be {what}")]
    TooLarge {
        path: PathBuf,
        max: u64,
        what: &'static str,
    },
    /// The keystore's error in full in the message, not as a `source` that would print twice.
    #[error("{path}: {error}")]
    Keystore { path: PathBuf, error: KeystoreError },
    #[error(
        "{path} is an encrypted keystore: give its password file with --password-file FILE or \
         [validator] password_file"
    )]
    NoPasswordFile { path: PathBuf },
    #[error("{path}: the password file is empty")]
    EmptyPassword { path: PathBuf },
    #[error("{path}: the keystore says address {file} but holds the key of {key}")]
    AddressMismatch {
        path: PathBuf,
        file: Address,
        key: Address,
    },
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

    /// Writes the key, encrypted under `password`, to a new keystore file with mode 0600; an
    /// existing file is never replaced.
    pub fn write_keystore(
        &self,
        path: &Path,
        password: &[u8],
        params: ScryptParams,
    ) -> Result<(), KeyError> {
        let json = keystore::encrypt(
            &self.secret.secret_bytes(),
            password,
            Some(self.address()),
            params,
        );
        write_private(path, json.as_bytes())
    }

    /// Writes the key in plain hex to a new file with mode 0600; an existing file is never
    /// replaced. Only for a key the node makes for itself (the dev chain's, in its datadir): a
    /// password kept beside it would protect nothing the file's mode does not.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let hex = Zeroizing::new(alloy_primitives::hex::encode(self.secret.secret_bytes()));
        write_private(path, hex.as_bytes())
    }

    /// Reads a key that `write_new` wrote: mode-checked like every key file, without the warning
    /// `load` gives an operator's unencrypted key.
    pub fn load_own(path: &Path) -> Result<Self, KeyError> {
        Self::from_hex(path, &read_private(path, Private::Key)?)
    }

    /// Opens a validator key file: a keystore with the password in `password_file`, or (with a
    /// warning) a plain hex key. Either file is refused if other users can read it.
    pub fn load(key_file: &Path, password_file: Option<&Path>) -> Result<Self, KeyError> {
        let bytes = read_private(key_file, Private::Key)?;
        if !bytes.trim_ascii_start().starts_with(b"{") {
            let key = Self::from_hex(key_file, &bytes)?;
            tracing::warn!(
                target: "node::keys",
                path = %key_file.display(),
                "the validator key file is not encrypted; convert it to a keystore with \
                 `kestrel keygen --from-hex FILE --out NEW --password-file PW`"
            );
            return Ok(key);
        }
        let password_file = password_file.ok_or_else(|| KeyError::NoPasswordFile {
            path: key_file.to_owned(),
        })?;
        let password = read_password(password_file)?;
        let keystore_err = |error| KeyError::Keystore {
            path: key_file.to_owned(),
            error,
        };
        let opened = keystore::decrypt(&bytes, &password).map_err(keystore_err)?;
        let bytes: &[u8; 32] = opened.secret[..]
            .try_into()
            .map_err(|_| KeyError::Invalid {
                path: key_file.to_owned(),
                reason: format!("the keystore holds {} bytes, not 32", opened.secret.len()),
            })?;
        let key = Self {
            secret: SecretKey::from_byte_array(bytes).map_err(|_| KeyError::Invalid {
                path: key_file.to_owned(),
                reason: "the keystore's secret is out of the curve's range".into(),
            })?,
        };
        if let Some(file) = opened.address
            && file != key.address()
        {
            return Err(KeyError::AddressMismatch {
                path: key_file.to_owned(),
                file,
                key: key.address(),
            });
        }
        Ok(key)
    }

    /// A plain key file: 64 hex digits, optionally `0x`-prefixed, surrounding space ignored.
    fn from_hex(path: &Path, bytes: &[u8]) -> Result<Self, KeyError> {
        let invalid = |reason: &str| KeyError::Invalid {
            path: path.to_owned(),
            reason: reason.into(),
        };
        let text = bytes.trim_ascii();
        let hex = text.strip_prefix(b"0x").unwrap_or(text);
        let mut secret = Zeroizing::new([0u8; 32]);
        alloy_primitives::hex::decode_to_slice(hex, &mut *secret)
            .map_err(|_| invalid("expected 64 hex digits"))?;
        let secret =
            SecretKey::from_byte_array(&secret).map_err(|_| invalid("out of the curve's range"))?;
        Ok(Self { secret })
    }
}

/// Reads a password file: its first line, without the line ending (as geth's `--password`).
pub fn read_password(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let bytes = read_private(path, Private::Password)?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(KeyError::EmptyPassword {
            path: path.to_owned(),
        });
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// The two kinds of private file: each has its size bound and its name in errors.
#[derive(Debug, Clone, Copy)]
enum Private {
    Key,
    Password,
}

impl Private {
    fn bytes_max(self) -> u64 {
        match self {
            Self::Key => KEY_FILE_BYTES_MAX,
            Self::Password => PASSWORD_FILE_BYTES_MAX,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Key => "the validator key",
            Self::Password => "the keystore password",
        }
    }
}

/// Reads a file that must be private to its owner, up to its kind's size bound.
fn read_private(path: &Path, kind: Private) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let (max, what) = (kind.bytes_max(), kind.what());
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    // The mode of the file opened, not of the path looked up again: no swap in between.
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Readable {
            path: path.to_owned(),
            mode,
            what,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(max + 1).read_to_end(&mut bytes).map_err(io_err)?;
    if bytes.len() as u64 > max {
        return Err(KeyError::TooLarge {
            path: path.to_owned(),
            max,
            what,
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to a new file with mode 0600; an existing file is never replaced.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
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
    file.write_all(bytes)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io_err)
}

/// The scrypt parameters `--scrypt-light` chooses between.
pub fn scrypt_params(light: bool) -> ScryptParams {
    if light {
        ScryptParams::LIGHT
    } else {
        ScryptParams::STANDARD
    }
}

/// `kestrel keygen`: writes a new key (or `--from-hex`'s) as a keystore encrypted with the
/// password file's password, and prints its public key and address, never the secret.
pub fn keygen(args: &KeygenArgs) -> Result<(), KeyError> {
    let password = read_password(&args.password_file)?;
    let key = match &args.from_hex {
        Some(path) => {
            let bytes = read_private(path, Private::Key)?;
            ValidatorKey::from_hex(path, &bytes)?
        }
        None => ValidatorKey::generate(),
    };
    let params = scrypt_params(args.scrypt_light);
    key.write_keystore(&args.out, &password, params)?;
    println!(
        "wrote {} (keystore v3, scrypt n={} r={} p={}, mode 0600)",
        args.out.display(),
        1u64 << params.log_n,
        params.r,
        params.p
    );
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

    fn private(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn key_round_trips_through_a_keystore_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (path, pw) = (dir.path().join("keystore.json"), dir.path().join("pw"));
        private(&pw, "correct horse\n", 0o600);
        let key = ValidatorKey::generate();
        key.write_keystore(&path, b"correct horse", ScryptParams::LIGHT)
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, KEY_FILE_MODE);
        let text = std::fs::read_to_string(&path).unwrap();
        let secret = alloy_primitives::hex::encode(key.secret.secret_bytes());
        assert!(!text.contains(&secret), "the secret is encrypted");
        let loaded = ValidatorKey::load(&path, Some(&pw)).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(matches!(
            ValidatorKey::generate().write_keystore(&path, b"x", ScryptParams::LIGHT),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(
            ValidatorKey::load(&path, Some(&pw)).unwrap().address(),
            key.address()
        );
        let err = ValidatorKey::load(&path, None).unwrap_err();
        assert!(matches!(err, KeyError::NoPasswordFile { .. }), "{err}");
    }

    #[test]
    fn a_wrong_password_is_refused_naming_the_file_and_the_mac() {
        let dir = tempfile::tempdir().unwrap();
        let (path, pw) = (dir.path().join("keystore.json"), dir.path().join("pw"));
        ValidatorKey::generate()
            .write_keystore(&path, b"right", ScryptParams::LIGHT)
            .unwrap();
        private(&pw, "wrong\n", 0o600);
        let err = ValidatorKey::load(&path, Some(&pw)).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Keystore {
                    error: KeystoreError::Mac,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("keystore.json") && message.contains("MAC"),
            "{message}"
        );
        // Only the first line is the password; a trailing \r (a file from Windows) is no part of it.
        private(&pw, "right\r\nsecond line\n", 0o600);
        assert!(ValidatorKey::load(&path, Some(&pw)).is_ok());
        private(&pw, "\n", 0o600);
        let err = ValidatorKey::load(&path, Some(&pw)).unwrap_err();
        assert!(matches!(err, KeyError::EmptyPassword { .. }), "{err}");
    }

    #[test]
    fn keystores_and_password_files_that_others_can_read_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, pw) = (dir.path().join("keystore.json"), dir.path().join("pw"));
        ValidatorKey::generate()
            .write_keystore(&path, b"pw", ScryptParams::LIGHT)
            .unwrap();
        private(&pw, "pw", 0o644);
        let err = ValidatorKey::load(&path, Some(&pw)).unwrap_err();
        assert!(
            matches!(err, KeyError::Readable { mode: 0o644, what: "the keystore password", ref path } if *path == pw),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        private(&pw, "pw", 0o640);
        assert!(matches!(
            ValidatorKey::load(&path, Some(&pw)),
            Err(KeyError::Readable { mode: 0o640, .. })
        ));
        private(&pw, "pw", 0o400);
        assert!(
            ValidatorKey::load(&path, Some(&pw)).is_ok(),
            "read-only is fine"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = ValidatorKey::load(&path, Some(&pw)).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Readable {
                    mode: 0o604,
                    what: "the validator key",
                    ..
                }
            ),
            "{err}"
        );
        private(
            &pw,
            &"p".repeat(PASSWORD_FILE_BYTES_MAX as usize + 1),
            0o600,
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ValidatorKey::load(&path, Some(&pw)),
            Err(KeyError::TooLarge { .. })
        ));
    }

    #[test]
    fn plain_hex_key_files_still_load_and_convert_to_a_keystore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validator.key");
        let key = ValidatorKey::generate();
        let hex = alloy_primitives::hex::encode(key.secret.secret_bytes());
        private(&path, &format!("{hex}\n"), 0o644);
        let err = ValidatorKey::load(&path, None).unwrap_err();
        assert!(
            matches!(err, KeyError::Readable { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            ValidatorKey::load(&path, None).unwrap().address(),
            key.address()
        );

        let pw = dir.path().join("pw");
        private(&pw, "pw\n", 0o600);
        let out = dir.path().join("keystore.json");
        keygen(&KeygenArgs {
            out: out.clone(),
            password_file: pw.clone(),
            from_hex: Some(path.clone()),
            scrypt_light: true,
        })
        .unwrap();
        let converted = ValidatorKey::load(&out, Some(&pw)).unwrap();
        assert_eq!(converted.address(), key.address());

        private(&path, "zz", 0o600);
        let err = ValidatorKey::load(&path, None).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err}");
    }

    #[test]
    fn the_nodes_own_key_round_trips_with_mode_0600_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own.key");
        let key = ValidatorKey::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, KEY_FILE_MODE);
        assert_eq!(
            ValidatorKey::load_own(&path).unwrap().address(),
            key.address()
        );
        assert!(matches!(
            ValidatorKey::generate().write_new(&path),
            Err(KeyError::Exists { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ValidatorKey::load_own(&path),
            Err(KeyError::Readable { .. })
        ));
    }

    #[test]
    fn a_keystore_whose_address_is_not_its_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, pw) = (dir.path().join("keystore.json"), dir.path().join("pw"));
        private(&pw, "pw", 0o600);
        let json = keystore::encrypt(
            &ValidatorKey::generate().secret.secret_bytes(),
            b"pw",
            Some(Address::repeat_byte(1)),
            ScryptParams::LIGHT,
        );
        private(&path, &json, 0o600);
        let err = ValidatorKey::load(&path, Some(&pw)).unwrap_err();
        assert!(matches!(err, KeyError::AddressMismatch { .. }), "{err}");
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

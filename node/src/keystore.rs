//! Ethereum keystore v3 (the Web3 Secret Storage definition), as geth and `eth-keyfile` write it:
//! the secret encrypted with AES-128-CTR under the first half of a key derived from the password
//! with scrypt, and `mac = keccak256(derived[16..32] ‖ ciphertext)` to tell a wrong password from
//! a right one before the plaintext is used.
//!
//! Writing uses scrypt with geth's parameters; reading also takes PBKDF2-HMAC-SHA256 keystores
//! (the spec's other KDF, `eth-keyfile`'s default), so a key made by another tool can be used.
//! This module works on bytes; `keys.rs` owns the files, their modes and the password file.
//!
//! The parameters come from the file, so a file could ask for any amount of memory and time;
//! [`SCRYPT_MEMORY_BYTES_MAX`], [`SCRYPT_P_MAX`] and [`PBKDF2_ROUNDS_MAX`] bound them.

use aes::cipher::{KeyIvInit, StreamCipher};
use alloy_primitives::{Address, hex, keccak256};
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// Most memory a keystore's scrypt parameters may ask for (128·r·n bytes): 4x geth's standard.
pub const SCRYPT_MEMORY_BYTES_MAX: u64 = 1 << 30;
/// Most parallel scrypt lanes (p) a keystore may ask for; each costs the full time again.
pub const SCRYPT_P_MAX: u32 = 16;
/// Most PBKDF2 rounds a keystore may ask for (about 10 s of SHA-256 on one core).
pub const PBKDF2_ROUNDS_MAX: u32 = 10_000_000;
/// Length of the derived key: 16 bytes of AES key, 16 bytes of MAC key.
const DKLEN: usize = 32;
const SALT_BYTES: usize = 32;
const IV_BYTES: usize = 16;

/// scrypt's cost parameters: n = 2^log_n iterations of r-sized blocks, p lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScryptParams {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl ScryptParams {
    /// geth's `StandardScryptN`/`StandardScryptP`: 256 MiB and about a second per derivation.
    pub const STANDARD: Self = Self {
        log_n: 18,
        r: 8,
        p: 1,
    };
    /// geth's `LightScryptN`/`LightScryptP` (`--lightkdf`): 4 MiB and a few milliseconds, for
    /// test networks that restart their validators often.
    pub const LIGHT: Self = Self {
        log_n: 12,
        r: 8,
        p: 6,
    };

    /// In u128: a file's n (up to 2^63) and r (up to 2^32) must not overflow the check.
    fn memory_bytes(self) -> u128 {
        (128 * u128::from(self.r)) << self.log_n
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("not a keystore v3 JSON file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("keystore version {0}; only version 3 is supported")]
    Version(u64),
    #[error("unsupported {what} `{value}` (supported: {supported})")]
    Unsupported {
        what: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("keystore {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("wrong password: the keystore's MAC does not match (or the file was altered)")]
    Mac,
}

/// The `crypto` section. `Crypto` is accepted too: geth reads JSON keys case-insensitively and
/// some older tools capitalised it.
#[derive(Debug, Serialize, Deserialize)]
struct KeystoreJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(alias = "Crypto")]
    crypto: CryptoJson,
    id: String,
    version: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CryptoJson {
    cipher: String,
    ciphertext: String,
    cipherparams: CipherParams,
    kdf: String,
    kdfparams: serde_json::Value,
    mac: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CipherParams {
    iv: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ScryptJson {
    dklen: usize,
    n: u64,
    p: u32,
    r: u32,
    salt: String,
}

#[derive(Debug, Deserialize)]
struct Pbkdf2Json {
    c: u32,
    dklen: usize,
    prf: String,
    salt: String,
}

/// What a keystore holds once opened.
pub struct Decrypted {
    pub secret: Zeroizing<Vec<u8>>,
    /// The address the file claims (optional in the format); the caller checks it.
    pub address: Option<Address>,
}

/// Encrypts `secret` under `password` into keystore v3 JSON, with a fresh salt, IV and id.
pub fn encrypt(
    secret: &[u8],
    password: &[u8],
    address: Option<Address>,
    params: ScryptParams,
) -> String {
    let mut rng = rand::rng();
    let salt: [u8; SALT_BYTES] = rng.random();
    let iv: [u8; IV_BYTES] = rng.random();
    let derived = scrypt_key(password, &salt, params).expect("the built-in parameters are valid");
    let mut ciphertext = secret.to_vec();
    aes_ctr(&derived, &iv, &mut ciphertext);
    let mac = mac(&derived, &ciphertext);
    let json = KeystoreJson {
        address: address.map(|a| hex::encode(a.as_slice())),
        crypto: CryptoJson {
            cipher: "aes-128-ctr".into(),
            ciphertext: hex::encode(&ciphertext),
            cipherparams: CipherParams {
                iv: hex::encode(iv),
            },
            kdf: "scrypt".into(),
            kdfparams: serde_json::to_value(ScryptJson {
                dklen: DKLEN,
                n: 1 << params.log_n,
                p: params.p,
                r: params.r,
                salt: hex::encode(salt),
            })
            .expect("the parameters serialize"),
            mac: hex::encode(mac),
        },
        id: uuid_v4(rng.random()),
        version: 3,
    };
    serde_json::to_string_pretty(&json).expect("the keystore serializes")
}

/// Opens a keystore: derives the key, checks the MAC, decrypts.
pub fn decrypt(json: &[u8], password: &[u8]) -> Result<Decrypted, KeystoreError> {
    let json: KeystoreJson = serde_json::from_slice(json)?;
    if json.version != 3 {
        return Err(KeystoreError::Version(json.version));
    }
    let crypto = json.crypto;
    if crypto.cipher != "aes-128-ctr" {
        return Err(KeystoreError::Unsupported {
            what: "cipher",
            value: crypto.cipher,
            supported: "aes-128-ctr",
        });
    }
    let iv: [u8; IV_BYTES] = hex_array("cipherparams.iv", &crypto.cipherparams.iv)?;
    let mut ciphertext = hex_vec("ciphertext", &crypto.ciphertext)?;
    let expected_mac: [u8; 32] = hex_array("mac", &crypto.mac)?;
    let address = json
        .address
        .map(|a| hex_array::<20>("address", &a).map(Address::from))
        .transpose()?;
    let derived = match crypto.kdf.as_str() {
        "scrypt" => {
            let p: ScryptJson = serde_json::from_value(crypto.kdfparams)?;
            check_dklen(p.dklen)?;
            if !p.n.is_power_of_two() || p.n < 2 {
                return Err(invalid(
                    "kdfparams.n",
                    format!("{} is not a power of 2", p.n),
                ));
            }
            let params = ScryptParams {
                log_n: p.n.trailing_zeros() as u8,
                r: p.r,
                p: p.p,
            };
            if p.r == 0 || params.memory_bytes() > u128::from(SCRYPT_MEMORY_BYTES_MAX) {
                return Err(invalid(
                    "kdfparams",
                    format!(
                        "n={} r={} asks for {} bytes; at most {SCRYPT_MEMORY_BYTES_MAX}",
                        p.n,
                        p.r,
                        params.memory_bytes()
                    ),
                ));
            }
            if p.p == 0 || p.p > SCRYPT_P_MAX {
                return Err(invalid(
                    "kdfparams.p",
                    format!("{}; between 1 and {SCRYPT_P_MAX}", p.p),
                ));
            }
            scrypt_key(password, &hex_vec("kdfparams.salt", &p.salt)?, params)?
        }
        "pbkdf2" => {
            let p: Pbkdf2Json = serde_json::from_value(crypto.kdfparams)?;
            check_dklen(p.dklen)?;
            if p.prf != "hmac-sha256" {
                return Err(KeystoreError::Unsupported {
                    what: "kdfparams.prf",
                    value: p.prf,
                    supported: "hmac-sha256",
                });
            }
            if p.c == 0 || p.c > PBKDF2_ROUNDS_MAX {
                return Err(invalid(
                    "kdfparams.c",
                    format!("{}; between 1 and {PBKDF2_ROUNDS_MAX}", p.c),
                ));
            }
            let salt = hex_vec("kdfparams.salt", &p.salt)?;
            let mut derived = Zeroizing::new([0u8; DKLEN]);
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, &salt, p.c, &mut *derived);
            derived
        }
        _ => {
            return Err(KeystoreError::Unsupported {
                what: "kdf",
                value: crypto.kdf,
                supported: "scrypt, pbkdf2",
            });
        }
    };
    // Constant time: how many bytes of the MAC matched must not tell anything about the password.
    if !bool::from(mac(&derived, &ciphertext).ct_eq(&expected_mac)) {
        return Err(KeystoreError::Mac);
    }
    aes_ctr(&derived, &iv, &mut ciphertext);
    Ok(Decrypted {
        secret: Zeroizing::new(ciphertext),
        address,
    })
}

fn scrypt_key(
    password: &[u8],
    salt: &[u8],
    params: ScryptParams,
) -> Result<Zeroizing<[u8; DKLEN]>, KeystoreError> {
    let params = scrypt::Params::new(params.log_n, params.r, params.p)
        .map_err(|e| invalid("kdfparams", e.to_string()))?;
    let mut derived = Zeroizing::new([0u8; DKLEN]);
    scrypt::scrypt(password, salt, &params, &mut *derived).expect("32 bytes is a valid length");
    Ok(derived)
}

/// AES-128-CTR with the derived key's first half; the same call encrypts and decrypts.
fn aes_ctr(derived: &[u8; DKLEN], iv: &[u8; IV_BYTES], data: &mut [u8]) {
    let key: &[u8; 16] = derived[..16].try_into().expect("16 bytes");
    Aes128Ctr::new(key.into(), iv.into()).apply_keystream(data);
}

fn mac(derived: &[u8; DKLEN], ciphertext: &[u8]) -> [u8; 32] {
    keccak256([&derived[16..], ciphertext].concat()).0
}

fn check_dklen(dklen: usize) -> Result<(), KeystoreError> {
    if dklen != DKLEN {
        return Err(invalid(
            "kdfparams.dklen",
            format!("{dklen}; expected {DKLEN}"),
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> KeystoreError {
    KeystoreError::Invalid { field, reason }
}

fn hex_vec(field: &'static str, text: &str) -> Result<Vec<u8>, KeystoreError> {
    hex::decode(text).map_err(|e| invalid(field, e.to_string()))
}

fn hex_array<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], KeystoreError> {
    let bytes = hex_vec(field, text)?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| invalid(field, format!("{len} bytes; expected {N}")))
}

/// A random (version 4) UUID, the keystore's `id`.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Web3 Secret Storage definition's test vectors, as go-ethereum keeps them in
    /// `accounts/keystore/testdata/v3_test_vector.json` (the wiki page's two, and two keys that
    /// an old encoder wrote without their leading zero bytes).
    const WIKI_SCRYPT: &str = r#"{"crypto": {"cipher": "aes-128-ctr",
        "cipherparams": {"iv": "83dbcc02d8ccb40e466191a123791e0e"},
        "ciphertext": "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
        "kdf": "scrypt", "kdfparams": {"dklen": 32, "n": 262144, "r": 1, "p": 8,
            "salt": "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"},
        "mac": "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097"},
        "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6", "version": 3}"#;
    const WIKI_PBKDF2: &str = r#"{"crypto": {"cipher": "aes-128-ctr",
        "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf": "pbkdf2", "kdfparams": {"c": 262144, "dklen": 32, "prf": "hmac-sha256",
            "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"},
        "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6", "version": 3}"#;
    const WIKI_PRIV: &str = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
    const KEY_31_BYTES: &str = r#"{"crypto": {"cipher": "aes-128-ctr",
        "cipherparams": {"iv": "e0c41130a323adc1446fc82f724bca2f"},
        "ciphertext": "9517cd5bdbe69076f9bf5057248c6c050141e970efa36ce53692d5d59a3984",
        "kdf": "scrypt", "kdfparams": {"dklen": 32, "n": 2, "r": 8, "p": 1,
            "salt": "711f816911c92d649fb4c84b047915679933555030b3552c1212609b38208c63"},
        "mac": "d5e116151c6aa71470e67a7d42c9620c75c4d23229847dcc127794f0732b0db5"},
        "id": "fecfc4ce-e956-48fd-953b-30f8b52ed66c", "version": 3}"#;
    /// go-ethereum's `accounts/keystore/testdata/very-light-scrypt.json` (password ""), which
    /// its `TestKeyEncryptDecrypt` opens as account 0x45dea0fb…cbb8.
    const GETH_VERY_LIGHT: &str = r#"{"address": "45dea0fb0bba44f4fcf290bba71fd57d7117cbb8",
        "crypto": {"cipher": "aes-128-ctr",
        "ciphertext": "b87781948a1befd247bff51ef4063f716cf6c2d3481163e9a8f42e1f9bb74145",
        "cipherparams": {"iv": "dc4926b48a105133d2f16b96833abf1e"},
        "kdf": "scrypt", "kdfparams": {"dklen": 32, "n": 2, "p": 1, "r": 8,
            "salt": "004244bbdc51cadda545b1cfa43cff9ed2ae88e08c61f1479dbb45410722f8f0"},
        "mac": "39990c1684557447940d4c69e06b1b82b2aceacb43f284df65c956daf3046b85"},
        "id": "ce541d8d-c79b-40f8-9f8c-20f59616faba", "version": 3}"#;

    #[test]
    fn the_specs_vectors_decrypt_to_their_keys() {
        for json in [WIKI_SCRYPT, WIKI_PBKDF2] {
            let opened = decrypt(json.as_bytes(), b"testpassword").unwrap();
            assert_eq!(hex::encode(&*opened.secret), WIKI_PRIV);
            assert_eq!(opened.address, None);
        }
        let opened = decrypt(KEY_31_BYTES.as_bytes(), b"foo").unwrap();
        assert_eq!(
            hex::encode(&*opened.secret),
            "fa7b3db73dc7dfdf8c5fbdb796d741e4488628c41fc4febd9160a866ba0f35"
        );
        let opened = decrypt(GETH_VERY_LIGHT.as_bytes(), b"").unwrap();
        let secret =
            secp256k1::SecretKey::from_byte_array(&opened.secret[..].try_into().unwrap()).unwrap();
        let public = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &secret);
        let derived = Address::from_raw_public_key(&public.serialize_uncompressed()[1..]);
        assert_eq!(opened.address, Some(derived));
        assert_eq!(
            derived,
            "0x45dea0fb0bba44f4fcf290bba71fd57d7117cbb8"
                .parse::<Address>()
                .unwrap()
        );
    }

    #[test]
    fn a_wrong_password_or_an_altered_file_is_a_mac_mismatch() {
        for json in [WIKI_PBKDF2, GETH_VERY_LIGHT] {
            let err = decrypt(json.as_bytes(), b"testpassworD").err().unwrap();
            assert!(matches!(err, KeystoreError::Mac), "{err}");
        }
        let altered = GETH_VERY_LIGHT.replace("b87781948a", "b87781948b");
        let err = decrypt(altered.as_bytes(), b"").err().unwrap();
        assert!(matches!(err, KeystoreError::Mac), "{err}");
        assert!(err.to_string().contains("wrong password"));
    }

    #[test]
    fn round_trip_with_geths_parameters_and_the_files_fields() {
        let secret = [0x5au8; 32];
        let address = Address::repeat_byte(0x11);
        let json = encrypt(&secret, b"pw", Some(address), ScryptParams::LIGHT);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["version"], 3);
        assert_eq!(value["address"], "1111111111111111111111111111111111111111");
        assert_eq!(value["crypto"]["kdf"], "scrypt");
        assert_eq!(value["crypto"]["cipher"], "aes-128-ctr");
        let kdf = &value["crypto"]["kdfparams"];
        assert_eq!(
            (&kdf["n"], &kdf["r"], &kdf["p"]),
            (&4096.into(), &8.into(), &6.into())
        );
        assert_eq!(kdf["salt"].as_str().unwrap().len(), 2 * SALT_BYTES);
        let id = value["id"].as_str().unwrap();
        assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
        assert_ne!(value["crypto"]["ciphertext"], hex::encode(secret));

        let opened = decrypt(json.as_bytes(), b"pw").unwrap();
        assert_eq!(*opened.secret, secret);
        assert_eq!(opened.address, Some(address));
        // Fresh salt and IV each time: the same key and password never give the same file.
        assert_ne!(encrypt(&secret, b"pw", None, ScryptParams::LIGHT), json);
    }

    #[test]
    fn parameters_past_the_limits_are_refused_before_any_work() {
        let with = |kdfparams: &str| {
            GETH_VERY_LIGHT.replace(
                r#""kdfparams": {"dklen": 32, "n": 2, "p": 1, "r": 8,"#,
                kdfparams,
            )
        };
        for (params, field) in [
            (
                r#""kdfparams": {"dklen": 32, "n": 1073741824, "p": 1, "r": 8,"#,
                "kdfparams",
            ),
            (
                r#""kdfparams": {"dklen": 32, "n": 2, "p": 1000, "r": 8,"#,
                "kdfparams.p",
            ),
            (
                r#""kdfparams": {"dklen": 32, "n": 3, "p": 1, "r": 8,"#,
                "kdfparams.n",
            ),
            (
                r#""kdfparams": {"dklen": 16, "n": 2, "p": 1, "r": 8,"#,
                "kdfparams.dklen",
            ),
        ] {
            let err = decrypt(with(params).as_bytes(), b"").err().unwrap();
            assert!(
                matches!(err, KeystoreError::Invalid { field: f, .. } if f == field),
                "{params}: {err}"
            );
        }
        let err = decrypt(
            GETH_VERY_LIGHT
                .replace(r#""version": 3"#, r#""version": 4"#)
                .as_bytes(),
            b"",
        )
        .err()
        .unwrap();
        assert!(matches!(err, KeystoreError::Version(4)), "{err}");
        let err = decrypt(b"0123abcd", b"").err().unwrap();
        assert!(matches!(err, KeystoreError::Json(_)), "{err}");
    }
}

//! C2SP signed notes (c2sp.org/signed-note) with ECDSA P-256 keys (signature type 0x02), and C2SP
//! checkpoints (c2sp.org/tlog-checkpoint).
//!
//! A note is text ending in a newline, a blank line, then signature lines
//! `— <key name> <base64(4-byte key ID || DER ECDSA signature)>`. For type 0x02 the key ID is the
//! first 4 bytes of SHA-256 of the key's DER SubjectPublicKeyInfo, and the signature is ECDSA
//! P-256 over SHA-256 of the text (including its final newline). Verifier keys are written
//! `<name>+<8 hex key ID>+<base64(0x02 || SPKI DER)>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::merkle::Hash;
use crate::crypto::{CryptoProvider, SigAlg, SignatureValue, VerifyKey};
use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::public::EccCurve;

/// The signature type byte of ECDSA verifier keys.
const TYPE_ECDSA: u8 = 0x02;
/// The em dash that opens a signature line.
const DASH: &str = "\u{2014} ";
/// Most signature lines read (the spec asks verifiers to accept at least 16).
const MAX_SIGNATURES: usize = 100;
/// Largest note read.
const MAX_NOTE: usize = 64 * 1024;

fn bad(why: impl Into<String>) -> EvidenceError {
    EvidenceError::Checkpoint(why.into())
}

/// An ECDSA P-256 note verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    spki: Vec<u8>,
    x: Vec<u8>,
    y: Vec<u8>,
}

impl NoteVerifier {
    /// From a key name and a P-256 public key's DER SubjectPublicKeyInfo.
    pub fn from_spki(name: &str, spki: &[u8]) -> Result<Self, EvidenceError> {
        use p256::pkcs8::DecodePublicKey;
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
            return Err(bad("key name must be non-empty, without spaces or '+'"));
        }
        let key =
            p256::PublicKey::from_public_key_der(spki).map_err(|_| bad("not a P-256 SPKI"))?;
        let point = {
            use p256::elliptic_curve::sec1::ToSec1Point;
            key.to_sec1_point(false)
        };
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (x.to_vec(), y.to_vec()),
            _ => return Err(bad("P-256 point")),
        };
        let digest = Sha256::digest(spki);
        let mut id = [0u8; 4];
        id.copy_from_slice(digest.get(..4).ok_or_else(|| bad("digest"))?);
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            spki: spki.to_vec(),
            x,
            y,
        })
    }

    /// Parses `<name>+<hex id>+<base64(0x02 || SPKI)>`, recomputing the key ID from the key and
    /// refusing a mismatch.
    pub fn parse(text: &str) -> Result<Self, EvidenceError> {
        let mut parts = text.trim_end().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("verifier key must be <name>+<key id>+<key>"));
        };
        let key = STANDARD
            .decode(key_b64)
            .map_err(|_| bad("verifier key is not base64"))?;
        let (ty, spki) = key.split_first().ok_or_else(|| bad("empty verifier key"))?;
        if *ty != TYPE_ECDSA {
            return Err(bad(format!(
                "verifier key type {ty:#04x} (only ECDSA, 0x02)"
            )));
        }
        let v = Self::from_spki(name, spki)?;
        if id_hex.len() != 8 || hex_id(&v.id) != id_hex.to_ascii_lowercase() {
            return Err(bad("verifier key ID does not match the key"));
        }
        Ok(v)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key ID.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The public key's affine coordinates (x, y), big-endian.
    pub fn point(&self) -> (&[u8], &[u8]) {
        (&self.x, &self.y)
    }

    /// The key's DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }
}

/// What the checkpoint key signing at a rotation signs to endorse the log's new key: a fixed
/// domain-separation line, the log's origin and the SHA-256 of the new key's SPKI (hex), each
/// ending in a newline. The signature is ECDSA P-256 over SHA-256 of these bytes, DER.
pub fn endorsement_message(origin: &str, spki: &[u8]) -> Vec<u8> {
    let digest = Sha256::digest(spki);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("writ checkpoint key rotation v1\n{origin}\n{hex}\n").into_bytes()
}

/// Whether `signature` (DER ECDSA) by `signer` endorses the key `spki` as a key of the log
/// named by `signer` (its origin).
pub fn endorses(
    provider: &dyn CryptoProvider,
    signer: &NoteVerifier,
    spki: &[u8],
    signature: &[u8],
) -> bool {
    let Ok((r, s)) = crate::crypto::der_ecdsa(signature) else {
        return false;
    };
    let vk = VerifyKey::Ecc {
        curve: EccCurve::P256,
        x: &signer.x,
        y: &signer.y,
    };
    provider
        .verify(
            &vk,
            SigAlg::Ecdsa(HashAlg::Sha256),
            &endorsement_message(&signer.name, spki),
            &SignatureValue::Ecdsa { r, s },
        )
        .is_ok()
}

fn hex_id(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![TYPE_ECDSA];
        key.extend_from_slice(&self.spki);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex_id(&self.id),
            STANDARD.encode(key)
        )
    }
}

/// Appends a signature line to a note text (the signer computed `der_signature`, ECDSA P-256
/// over SHA-256 of `text`).
pub fn signed_note(text: &str, key: &NoteVerifier, der_signature: &[u8]) -> String {
    signed_note_by(text, &[(key, der_signature)])
}

/// Appends one signature line per key, in the order given (a note signed by several keys, as
/// during a rotation of the log's key).
pub fn signed_note_by(text: &str, signatures: &[(&NoteVerifier, &[u8])]) -> String {
    let mut note = format!("{text}\n");
    for (key, der) in signatures {
        let mut blob = key.id.to_vec();
        blob.extend_from_slice(der);
        note.push_str(&format!("{DASH}{} {}\n", key.name, STANDARD.encode(blob)));
    }
    note
}

/// Verifies a signed note against `key`: at least one signature line by `key` must verify, and
/// every line that claims to be by `key` must verify. Returns the note's text.
pub fn verify_note<'a>(
    provider: &dyn CryptoProvider,
    note: &'a str,
    key: &NoteVerifier,
) -> Result<&'a str, EvidenceError> {
    verify_note_by_any(provider, note, std::slice::from_ref(key))
}

/// Verifies a signed note against a set of keys (those a relying party trusts, e.g. the old
/// and the new log key during a rotation): at least one signature line by one of them must
/// verify, and every line that claims to be by one of them must verify. Lines by other keys are
/// ignored, as the specification says. Returns the note's text.
pub fn verify_note_by_any<'a>(
    provider: &dyn CryptoProvider,
    note: &'a str,
    keys: &[NoteVerifier],
) -> Result<&'a str, EvidenceError> {
    if keys.is_empty() {
        return Err(bad("no verifier key"));
    }
    if note.len() > MAX_NOTE {
        return Err(bad("note too large"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad("control characters in the note"));
    }
    let split = note
        .find("\n\n")
        .ok_or_else(|| bad("no blank line between text and signatures"))?;
    let text = note.get(..split + 1).ok_or_else(|| bad("note"))?;
    let sigs = note.get(split + 2..).ok_or_else(|| bad("note"))?;
    if !sigs.ends_with('\n') {
        return Err(bad("signature block must end with a newline"));
    }
    let mut verified = false;
    for (n, line) in sigs.lines().enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(bad("too many signature lines"));
        }
        let rest = line
            .strip_prefix(DASH)
            .ok_or_else(|| bad("a signature line must start with an em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("signature line without a signature"))?;
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| bad("signature is not base64"))?;
        let Some(key) = keys
            .iter()
            .find(|k| name == k.name && blob.get(..4) == Some(&k.id[..]))
        else {
            // Another key's signature: ignored, as the spec says.
            continue;
        };
        let der = blob.get(4..).ok_or_else(|| bad("signature"))?;
        let (r, s) =
            crate::crypto::der_ecdsa(der).map_err(|_| bad("signature is not DER ECDSA"))?;
        let vk = VerifyKey::Ecc {
            curve: EccCurve::P256,
            x: &key.x,
            y: &key.y,
        };
        provider
            .verify(
                &vk,
                SigAlg::Ecdsa(HashAlg::Sha256),
                text.as_bytes(),
                &SignatureValue::Ecdsa { r, s },
            )
            .map_err(|_| {
                bad(format!(
                    "the signature by {} (key ID {}) does not verify",
                    key.name,
                    hex_id(&key.id)
                ))
            })?;
        verified = true;
    }
    if !verified {
        let names: Vec<String> = keys
            .iter()
            .map(|k| format!("{} (key ID {})", k.name, hex_id(&k.id)))
            .collect();
        return Err(bad(format!("no signature by {}", names.join(" or "))));
    }
    Ok(text)
}

/// A C2SP checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin (its unique name).
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The root hash.
    pub root: Hash,
    /// Extension lines (none written by writ).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, extension lines, each ending in a newline.
    pub fn text(&self) -> String {
        let mut t = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for e in &self.extensions {
            t.push_str(e);
            t.push('\n');
        }
        t
    }

    /// Parses a checkpoint's note text.
    pub fn parse_text(text: &str) -> Result<Self, EvidenceError> {
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("checkpoint text must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("empty origin"))?;
        let size_text = lines.next().ok_or_else(|| bad("no tree size"))?;
        let canonical = size_text == "0" || (!size_text.starts_with('0') && !size_text.is_empty());
        if !canonical || !size_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("tree size is not a canonical decimal"));
        }
        let size: u64 = size_text
            .parse()
            .map_err(|_| bad("tree size out of range"))?;
        let root_text = lines.next().ok_or_else(|| bad("no root hash"))?;
        let root: Hash = STANDARD
            .decode(root_text)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// Verifies a signed checkpoint note by `key` for `origin`.
    pub fn verify(
        provider: &dyn CryptoProvider,
        note: &str,
        key: &NoteVerifier,
        origin: &str,
    ) -> Result<Self, EvidenceError> {
        Self::verify_by_any(provider, note, std::slice::from_ref(key), origin)
    }

    /// Verifies a signed checkpoint note by any of `keys` for `origin` ([`verify_note_by_any`]).
    pub fn verify_by_any(
        provider: &dyn CryptoProvider,
        note: &str,
        keys: &[NoteVerifier],
        origin: &str,
    ) -> Result<Self, EvidenceError> {
        let text = verify_note_by_any(provider, note, keys)?;
        let cp = Self::parse_text(text)?;
        if cp.origin != origin {
            return Err(bad(format!("origin {:?}, expected {origin:?}", cp.origin)));
        }
        Ok(cp)
    }
}

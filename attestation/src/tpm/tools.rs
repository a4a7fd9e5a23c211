//! tpm2-tools file formats, for interop (`writ verify-quote` reads what `tpm2_quote` writes).

use super::HashAlg;
use super::pcr::{PcrSelection, PcrValues};
use crate::error::EvidenceError;

/// `sizeof(TPMS_PCR_SELECTION)` in tpm2-tss: hash (2), sizeofSelect (1), pcrSelect[4], 1 padding.
const SELECTION_ENTRY: usize = 8;
/// `sizeof(TPML_PCR_SELECTION)`: count (4) and 16 entries.
const SELECTION_LIST: usize = 4 + 16 * SELECTION_ENTRY;
/// `sizeof(TPM2B_DIGEST)`: size (2) and a 64-byte buffer.
const DIGEST_ENTRY: usize = 2 + 64;
/// `sizeof(TPML_DIGEST)`: count (4) and 8 digests.
const DIGEST_LIST: usize = 4 + 8 * DIGEST_ENTRY;
/// Most TPML_DIGESTs a PCR file may hold (tpm2-tools' own bound is 32).
const MAX_DIGEST_LISTS: usize = 32;

fn le16(b: &[u8], at: usize) -> Result<u16, EvidenceError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| EvidenceError::Malformed("PCR file truncated".into()))
}

fn le32(b: &[u8], at: usize) -> Result<u32, EvidenceError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| EvidenceError::Malformed("PCR file truncated".into()))
}

/// Parses the PCR file `tpm2_quote -o` (and `tpm2_pcrread -o`) writes: the C structures
/// TPML_PCR_SELECTION, a UINT32 count and that many TPML_DIGEST, in the host's (little-endian)
/// byte order, fixed sizes with padding. Values follow the selection order (banks as listed, PCRs
/// ascending), eight to a TPML_DIGEST.
pub fn read_pcr_file(bytes: &[u8]) -> Result<(PcrSelection, PcrValues), EvidenceError> {
    let bad = |why: String| EvidenceError::Malformed(format!("tpm2-tools PCR file: {why}"));
    let banks = le32(bytes, 0)? as usize;
    if banks == 0 || banks > 16 {
        return Err(bad(format!("{banks} banks")));
    }
    let mut selection = Vec::new();
    for i in 0..banks {
        let at = 4 + i * SELECTION_ENTRY;
        let hash = le16(bytes, at)?;
        let bank =
            HashAlg::from_id(hash).ok_or_else(|| bad(format!("unknown bank {hash:#06x}")))?;
        let size = usize::from(*bytes.get(at + 2).ok_or_else(|| bad("truncated".into()))?);
        if size > 4 {
            return Err(bad(format!("sizeofSelect {size}")));
        }
        let bitmap = bytes
            .get(at + 3..at + 3 + size)
            .ok_or_else(|| bad("truncated".into()))?;
        let mut pcrs = Vec::new();
        for (byte_index, byte) in bitmap.iter().enumerate() {
            for bit in 0..8u8 {
                if byte & (1 << bit) != 0 {
                    pcrs.push(
                        u8::try_from(byte_index * 8)
                            .unwrap_or(u8::MAX)
                            .saturating_add(bit),
                    );
                }
            }
        }
        selection.push((bank, pcrs));
    }
    let selection = PcrSelection::new(selection)?;
    let lists = le32(bytes, SELECTION_LIST)? as usize;
    if lists > MAX_DIGEST_LISTS {
        return Err(bad(format!("{lists} digest lists")));
    }
    let expected_len = SELECTION_LIST + 4 + lists * DIGEST_LIST;
    if bytes.len() != expected_len {
        return Err(bad(format!(
            "{} bytes, expected {expected_len}",
            bytes.len()
        )));
    }
    let mut digests: Vec<&[u8]> = Vec::new();
    for l in 0..lists {
        let at = SELECTION_LIST + 4 + l * DIGEST_LIST;
        let count = le32(bytes, at)? as usize;
        if count > 8 {
            return Err(bad(format!("a TPML_DIGEST with {count} digests")));
        }
        for d in 0..count {
            let entry = at + 4 + d * DIGEST_ENTRY;
            let size = usize::from(le16(bytes, entry)?);
            if size > 64 {
                return Err(bad(format!("a digest of {size} bytes")));
            }
            digests.push(
                bytes
                    .get(entry + 2..entry + 2 + size)
                    .ok_or_else(|| bad("truncated".into()))?,
            );
        }
    }
    let wanted: Vec<(HashAlg, u8)> = selection.pcrs().collect();
    if wanted.len() != digests.len() {
        return Err(bad(format!(
            "{} values for {} selected PCRs",
            digests.len(),
            wanted.len()
        )));
    }
    let mut values = PcrValues::new();
    for ((bank, index), value) in wanted.into_iter().zip(digests) {
        values.insert(bank, index, value.to_vec())?;
    }
    Ok((selection, values))
}

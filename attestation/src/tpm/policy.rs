//! Policy digests (TPM 2.0 Library, Part 3, 23.7 TPM2_PolicyPCR and 23.18 TPM2_PolicyAuthValue):
//! what a key's authPolicy must be for it to be usable only while the PCRs hold given values.

use super::HashAlg;
use super::pcr::{PcrSelection, PcrValues};
use super::wire::Writer;
use crate::error::EvidenceError;

/// TPM_CC_PolicyPCR.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// TPM_CC_PolicyAuthValue.
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;

/// The SHA-256 policy digest of TPM2_PolicyPCR over `selection` holding `values`, followed by
/// TPM2_PolicyAuthValue: a key with this authPolicy (and userWithAuth clear) signs only in a
/// policy session where the PCRs hold these values and the caller knows the key's authValue.
///
/// PolicyPCR extends `policyDigest || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || H(values)`,
/// the values concatenated in selection order and hashed with the policy's hash; PolicyAuthValue
/// extends `policyDigest || TPM_CC_PolicyAuthValue`.
pub fn pcr_and_auth_value(
    selection: &PcrSelection,
    values: &PcrValues,
) -> Result<Vec<u8>, EvidenceError> {
    let pcr_digest = values.digest(selection, HashAlg::Sha256)?;
    let mut w = Writer::default();
    w.bytes(&[0u8; 32]);
    w.u32(TPM_CC_POLICY_PCR);
    selection.write(&mut w);
    w.bytes(&pcr_digest);
    let after_pcr = HashAlg::Sha256.digest(&w.buf)?;
    let mut w = Writer::default();
    w.bytes(&after_pcr);
    w.u32(TPM_CC_POLICY_AUTH_VALUE);
    HashAlg::Sha256.digest(&w.buf)
}

//! TPML_PCR_SELECTION and PCR values.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::HashAlg;
use super::wire::{Reader, Writer};
use crate::error::EvidenceError;

/// Most banks a selection may name (a TPM has a handful).
const MAX_BANKS: u32 = 8;
/// PCR bitmap bytes: 24 PCRs need 3; up to 4 is accepted.
const MAX_SELECT: u8 = 4;
/// Highest PCR index accepted (a bitmap of 4 bytes).
const MAX_PCR: u8 = 31;

/// A PCR selection: banks in order, each with its PCR indices ascending. Parsed from
/// TPML_PCR_SELECTION or from tpm2-tools syntax (`sha256:0,1,2,7+sha1:0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    banks: Vec<(HashAlg, Vec<u8>)>,
    /// Each bank's sizeofSelect as it came off the wire (3 for selections built here, 4 when a PCR
    /// above 23 is selected), so a parsed selection re-encodes byte for byte.
    select_sizes: Vec<u8>,
}

impl PcrSelection {
    /// A selection from banks and indices. Refuses empty selections, repeated banks or indices
    /// above 31.
    pub fn new(banks: Vec<(HashAlg, Vec<u8>)>) -> Result<Self, EvidenceError> {
        let mut out: Vec<(HashAlg, Vec<u8>)> = Vec::with_capacity(banks.len());
        for (bank, mut pcrs) in banks {
            if out.iter().any(|(b, _)| *b == bank) {
                return Err(EvidenceError::PcrSelection(format!(
                    "bank {} repeated",
                    bank.name()
                )));
            }
            pcrs.sort_unstable();
            pcrs.dedup();
            if pcrs.iter().any(|p| *p > MAX_PCR) {
                return Err(EvidenceError::PcrSelection("PCR index above 31".into()));
            }
            out.push((bank, pcrs));
        }
        let select_sizes = out
            .iter()
            .map(|(_, pcrs)| if pcrs.iter().any(|p| *p > 23) { 4 } else { 3 })
            .collect();
        let selection = PcrSelection {
            banks: out,
            select_sizes,
        };
        if selection.is_empty() {
            return Err(EvidenceError::PcrSelection("the selection is empty".into()));
        }
        Ok(selection)
    }

    /// The banks and their PCR indices, in selection order.
    pub fn banks(&self) -> &[(HashAlg, Vec<u8>)] {
        &self.banks
    }

    /// True when no PCR is selected in any bank.
    pub fn is_empty(&self) -> bool {
        self.banks.iter().all(|(_, p)| p.is_empty())
    }

    /// The same PCRs in the same banks, ignoring bank order and empty banks.
    pub fn same_pcrs(&self, other: &PcrSelection) -> bool {
        let norm = |s: &PcrSelection| -> BTreeMap<HashAlg, Vec<u8>> {
            s.banks
                .iter()
                .filter(|(_, p)| !p.is_empty())
                .map(|(b, p)| (*b, p.clone()))
                .collect()
        };
        norm(self) == norm(other)
    }

    /// (bank, index) pairs in the order a TPM digests them: banks as listed, indices ascending.
    pub fn pcrs(&self) -> impl Iterator<Item = (HashAlg, u8)> + '_ {
        self.banks
            .iter()
            .flat_map(|(b, pcrs)| pcrs.iter().map(move |p| (*b, *p)))
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, EvidenceError> {
        let count = r.u32()?;
        if count > MAX_BANKS {
            return Err(EvidenceError::Malformed(format!(
                "TPML_PCR_SELECTION: {count} banks"
            )));
        }
        let mut banks = Vec::new();
        let mut select_sizes = Vec::new();
        for _ in 0..count {
            let bank = HashAlg::read(r, "TPMS_PCR_SELECTION.hash")?;
            let size = r.u8()?;
            if size > MAX_SELECT {
                return Err(EvidenceError::Malformed(format!(
                    "TPMS_PCR_SELECTION: sizeofSelect {size}"
                )));
            }
            let bitmap = r.bytes(usize::from(size))?;
            let mut pcrs = Vec::new();
            for (byte_index, byte) in bitmap.iter().enumerate() {
                for bit in 0..8u8 {
                    if byte & (1 << bit) != 0 {
                        // byte_index < 4, so the index fits in u8.
                        pcrs.push(
                            u8::try_from(byte_index)
                                .unwrap_or(u8::MAX)
                                .saturating_mul(8)
                                .saturating_add(bit),
                        );
                    }
                }
            }
            if banks.iter().any(|(b, _)| *b == bank) {
                return Err(EvidenceError::Malformed(format!(
                    "TPML_PCR_SELECTION: bank {} repeated",
                    bank.name()
                )));
            }
            banks.push((bank, pcrs));
            select_sizes.push(size);
        }
        Ok(PcrSelection {
            banks,
            select_sizes,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u32(u32::try_from(self.banks.len()).unwrap_or(0));
        for (i, (bank, pcrs)) in self.banks.iter().enumerate() {
            w.u16(bank.id());
            let size = self.select_sizes.get(i).copied().unwrap_or(3);
            let mut bitmap = [0u8; MAX_SELECT as usize];
            for p in pcrs {
                if let Some(b) = bitmap.get_mut(usize::from(p / 8)) {
                    *b |= 1 << (p % 8);
                }
            }
            w.u8(size);
            w.bytes(bitmap.get(..usize::from(size)).unwrap_or(&bitmap));
        }
    }
}

impl FromStr for PcrSelection {
    type Err = EvidenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| EvidenceError::PcrSelection(format!("{s:?}: {why}"));
        let mut banks = Vec::new();
        for part in s.split('+') {
            let (name, list) = part
                .split_once(':')
                .ok_or_else(|| bad("expected BANK:N,N,..."))?;
            let bank = match name {
                "sha1" => HashAlg::Sha1,
                "sha256" => HashAlg::Sha256,
                "sha384" => HashAlg::Sha384,
                "sha512" => HashAlg::Sha512,
                _ => return Err(bad("unknown bank")),
            };
            let mut pcrs = Vec::new();
            for n in list.split(',') {
                let i: u8 = n
                    .trim()
                    .parse()
                    .map_err(|_| bad("PCR index is not a number"))?;
                if pcrs.contains(&i) {
                    return Err(bad("PCR index repeated"));
                }
                pcrs.push(i);
            }
            banks.push((bank, pcrs));
        }
        PcrSelection::new(banks)
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (bank, pcrs)) in self.banks.iter().enumerate() {
            if n > 0 {
                f.write_str("+")?;
            }
            let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
            write!(f, "{}:{}", bank.name(), list.join(","))?;
        }
        Ok(())
    }
}

/// PCR values by (bank, index). Each value has its bank's digest size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrValues {
    values: BTreeMap<(HashAlg, u8), Vec<u8>>,
}

impl PcrValues {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value; refuses a value of the wrong size for its bank, an index above 31, or a
    /// second value for the same PCR.
    pub fn insert(
        &mut self,
        bank: HashAlg,
        index: u8,
        value: Vec<u8>,
    ) -> Result<(), EvidenceError> {
        if value.len() != bank.size() {
            return Err(EvidenceError::PcrValue(format!(
                "{}:{index} has {} bytes, expected {}",
                bank.name(),
                value.len(),
                bank.size()
            )));
        }
        if index > MAX_PCR {
            return Err(EvidenceError::PcrValue(format!(
                "PCR index {index} above 31"
            )));
        }
        if self.values.insert((bank, index), value).is_some() {
            return Err(EvidenceError::PcrValue(format!(
                "{}:{index} given twice",
                bank.name()
            )));
        }
        Ok(())
    }

    /// One value.
    pub fn get(&self, bank: HashAlg, index: u8) -> Option<&[u8]> {
        self.values.get(&(bank, index)).map(Vec::as_slice)
    }

    /// Every value.
    pub fn iter(&self) -> impl Iterator<Item = (HashAlg, u8, &[u8])> {
        self.values.iter().map(|((b, i), v)| (*b, *i, v.as_slice()))
    }

    /// The TPM's pcrDigest over `selection` with `hash`: the values concatenated in selection order.
    /// Fails if a selected PCR has no value.
    pub fn digest(
        &self,
        selection: &PcrSelection,
        hash: HashAlg,
    ) -> Result<Vec<u8>, EvidenceError> {
        let mut concat = Vec::new();
        for (bank, index) in selection.pcrs() {
            let v = self.get(bank, index).ok_or_else(|| {
                EvidenceError::PcrValue(format!(
                    "no value for selected PCR {}:{index}",
                    bank.name()
                ))
            })?;
            concat.extend_from_slice(v);
        }
        hash.digest(&concat)
    }
}

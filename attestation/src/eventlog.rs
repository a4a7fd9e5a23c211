//! The TCG PC Client firmware event log (TCG PC Client Platform Firmware Profile, section 10):
//! crypto-agile and legacy SHA-1 formats, parsed with bounded sizes, replayed into PCRs per bank,
//! and compared with quoted PCR values.
//!
//! What is built: the Spec ID event and its digest table, the StartupLocality event (PCR 0's
//! initial value), EV_NO_ACTION events that extend nothing, every bank the Spec ID event declares
//! (SHA-1, SHA-256, SHA-384, SHA-512 replayed; others skipped by their declared size), replay and
//! comparison naming the PCR and bank; EFI variables of PCR 7 with their signature lists (header
//! size honoured), checked against their digests, and the Secure Boot and ExitBootServices facts;
//! typed events ([`Detail`]: images with their device paths, firmware blobs, GPT, IPL strings,
//! boot options). Appraisal against reference values is in [`crate::appraisal`].

use sha2::Digest as _;

mod facts;
pub mod simulated;
mod typed;
pub use facts::{Fact, FactError, Pcr7Config};
pub use typed::*;

use crate::error::EvidenceError;
use crate::tpm::HashAlg;
use crate::tpm::pcr::{PcrSelection, PcrValues};

/// Largest log accepted.
pub const MAX_LOG: usize = 16 * 1024 * 1024;
/// Largest event data accepted (firmware volumes are logged by digest, not content).
const MAX_EVENT_DATA: usize = 1024 * 1024;
/// Most events accepted.
const MAX_EVENTS: usize = 100_000;
/// Most banks a Spec ID event may declare.
const MAX_BANKS: usize = 8;
/// PCRs an SRTM log may extend.
const PCR_COUNT: u32 = 24;

/// EV_NO_ACTION: logged, never extended.
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// EV_SEPARATOR.
pub const EV_SEPARATOR: u32 = 0x0000_0004;

/// The log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TCG_PCR_EVENT2 events, digests for every bank of the Spec ID event.
    CryptoAgile,
    /// TCG_PCR_EVENT events, SHA-1 only.
    Sha1,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log (0 is the first event).
    pub number: usize,
    /// The PCR it extends.
    pub pcr: u32,
    /// The event type.
    pub event_type: u32,
    /// (TPM_ALG_ID, digest) per bank, as logged.
    pub digests: Vec<(u16, Vec<u8>)>,
    /// The event data.
    pub data: Vec<u8>,
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The format.
    pub format: Format,
    /// (TPM_ALG_ID, digest size) per bank, from the Spec ID event (SHA-1 for legacy logs).
    pub banks: Vec<(u16, usize)>,
    /// The StartupLocality event's locality (0 when there is none).
    pub startup_locality: u8,
    /// The platform's UINTN size in bytes (4 or 8), from the Spec ID event (8 for legacy logs).
    pub uintn_size: usize,
    /// Every event after the Spec ID event.
    pub events: Vec<Event>,
}

fn bad(why: impl Into<String>) -> EvidenceError {
    EvidenceError::EventLog(why.into())
}

/// A little-endian cursor (the event log is in the firmware's byte order).
struct Le<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Le<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], EvidenceError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| bad(format!("truncated at byte {}", self.pos)))?;
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, EvidenceError> {
        self.bytes(1)?
            .first()
            .copied()
            .ok_or_else(|| bad("truncated"))
    }
    fn u16(&mut self) -> Result<u16, EvidenceError> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().map_err(|_| bad("truncated"))?,
        ))
    }
    fn u32(&mut self) -> Result<u32, EvidenceError> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().map_err(|_| bad("truncated"))?,
        ))
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

const SPEC_ID: &[u8] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8] = b"StartupLocality\0";

fn event_data<'a>(r: &mut Le<'a>) -> Result<&'a [u8], EvidenceError> {
    let size = r.u32()? as usize;
    if size > MAX_EVENT_DATA {
        return Err(bad(format!("EventSize {size} above {MAX_EVENT_DATA}")));
    }
    r.bytes(size)
}

/// Parses an event log (what `/sys/kernel/security/tpm0/binary_bios_measurements` holds).
pub fn parse(bytes: &[u8]) -> Result<EventLog, EvidenceError> {
    if bytes.is_empty() {
        return Err(bad("the log is empty"));
    }
    if bytes.len() > MAX_LOG {
        return Err(bad(format!("the log is larger than {MAX_LOG} bytes")));
    }
    let mut r = Le { buf: bytes, pos: 0 };
    // The first event is always in the legacy TCG_PCR_EVENT form.
    let first_pcr = r.u32()?;
    let first_type = r.u32()?;
    let first_digest = r.bytes(20)?.to_vec();
    let first_data = event_data(&mut r)?.to_vec();
    let agile = first_type == EV_NO_ACTION && first_data.starts_with(SPEC_ID);
    let mut log = EventLog {
        format: Format::Sha1,
        banks: vec![(HashAlg::Sha1.id(), 20)],
        startup_locality: 0,
        uintn_size: 8,
        events: Vec::new(),
    };
    if agile {
        log.format = Format::CryptoAgile;
        (log.banks, log.uintn_size) = spec_id_banks(&first_data)?;
        if first_pcr != 0 {
            return Err(bad("the Spec ID event is not on PCR 0"));
        }
    } else {
        if first_pcr >= PCR_COUNT {
            return Err(bad(format!("event 0 names PCR {first_pcr}")));
        }
        log.events.push(Event {
            number: 0,
            pcr: first_pcr,
            event_type: first_type,
            digests: vec![(HashAlg::Sha1.id(), first_digest)],
            data: first_data,
        });
    }
    let mut number = 1;
    while !r.done() {
        if log.events.len() >= MAX_EVENTS {
            return Err(bad(format!("more than {MAX_EVENTS} events")));
        }
        let pcr = r.u32()?;
        let event_type = r.u32()?;
        // Firmware logs some EV_NO_ACTION events (which extend nothing) on PCR 0xFFFFFFFF; any
        // other event must name a PCR of the SRTM range.
        if pcr >= PCR_COUNT && event_type != EV_NO_ACTION {
            return Err(bad(format!("event {number} names PCR {pcr}")));
        }
        let digests = match log.format {
            Format::Sha1 => vec![(HashAlg::Sha1.id(), r.bytes(20)?.to_vec())],
            Format::CryptoAgile => {
                let count = r.u32()? as usize;
                if count != log.banks.len() {
                    return Err(bad(format!(
                        "event {number} carries {count} digests, the Spec ID event declares {} banks",
                        log.banks.len()
                    )));
                }
                let mut d = Vec::with_capacity(count);
                for _ in 0..count {
                    let alg = r.u16()?;
                    let size = log
                        .banks
                        .iter()
                        .find(|(a, _)| *a == alg)
                        .map(|(_, s)| *s)
                        .ok_or_else(|| {
                            bad(format!(
                                "event {number}: digest of undeclared algorithm {alg:#06x}"
                            ))
                        })?;
                    if d.iter().any(|(a, _): &(u16, Vec<u8>)| *a == alg) {
                        return Err(bad(format!("event {number}: algorithm {alg:#06x} twice")));
                    }
                    d.push((alg, r.bytes(size)?.to_vec()));
                }
                d
            }
        };
        let data = event_data(&mut r)?.to_vec();
        if event_type == EV_NO_ACTION && data.starts_with(SPEC_ID) {
            // One Spec ID event, first: a later one would redeclare the banks under the events.
            return Err(bad(format!("event {number}: a second Spec ID event")));
        }
        if event_type == EV_NO_ACTION && data.starts_with(STARTUP_LOCALITY) {
            if pcr != 0 {
                return Err(bad("StartupLocality event not on PCR 0"));
            }
            if !log.events.is_empty() {
                return Err(bad("StartupLocality event after PCR 0 was extended"));
            }
            log.startup_locality = *data
                .get(STARTUP_LOCALITY.len())
                .ok_or_else(|| bad("StartupLocality without a locality"))?;
            if !matches!(log.startup_locality, 0 | 3 | 4) {
                return Err(bad(format!("StartupLocality {}", log.startup_locality)));
            }
        }
        log.events.push(Event {
            number,
            pcr,
            event_type,
            digests,
            data,
        });
        number += 1;
    }
    Ok(log)
}

fn spec_id_banks(data: &[u8]) -> Result<(Vec<(u16, usize)>, usize), EvidenceError> {
    let mut r = Le { buf: data, pos: 0 };
    r.bytes(SPEC_ID.len())?;
    let _platform_class = r.u32()?;
    let (_minor, _major, _errata, uintn) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
    // uintnSize: 1 for UINT32, 2 for UINT64.
    let uintn_size = match uintn {
        1 => 4,
        2 => 8,
        other => return Err(bad(format!("the Spec ID event gives uintnSize {other}"))),
    };
    let count = r.u32()? as usize;
    if count == 0 || count > MAX_BANKS {
        return Err(bad(format!("the Spec ID event declares {count} banks")));
    }
    let mut banks = Vec::with_capacity(count);
    for _ in 0..count {
        let alg = r.u16()?;
        let size = usize::from(r.u16()?);
        if let Some(h) = HashAlg::from_id(alg)
            && h.size() != size
        {
            return Err(bad(format!(
                "the Spec ID event gives {} a digest size of {size}",
                h.name()
            )));
        }
        if size == 0 || size > 64 {
            return Err(bad(format!("digest size {size} for algorithm {alg:#06x}")));
        }
        if banks.iter().any(|(a, _)| *a == alg) {
            return Err(bad(format!("algorithm {alg:#06x} declared twice")));
        }
        banks.push((alg, size));
    }
    let vendor = usize::from(r.u8()?);
    r.bytes(vendor)?;
    Ok((banks, uintn_size))
}

fn extend(bank: HashAlg, old: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut data = old.to_vec();
    data.extend_from_slice(digest);
    match bank {
        HashAlg::Sha1 => sha1::Sha1::digest(&data).to_vec(),
        HashAlg::Sha256 => sha2::Sha256::digest(&data).to_vec(),
        HashAlg::Sha384 => sha2::Sha384::digest(&data).to_vec(),
        HashAlg::Sha512 => sha2::Sha512::digest(&data).to_vec(),
    }
}

impl EventLog {
    /// The banks this log can be replayed into (declared and known).
    pub fn replay_banks(&self) -> Vec<HashAlg> {
        self.banks
            .iter()
            .filter_map(|(a, _)| HashAlg::from_id(*a))
            .collect()
    }

    /// Replays every event into PCRs per known bank. Only PCRs the log extends are returned; the
    /// others keep their reset value (zero; PCR 0 starts at the startup locality).
    pub fn replay(&self) -> Result<PcrValues, EvidenceError> {
        let mut pcrs: std::collections::BTreeMap<(HashAlg, u32), Vec<u8>> =
            std::collections::BTreeMap::new();
        for bank in self.replay_banks() {
            let alg = bank.id();
            for e in &self.events {
                if e.event_type == EV_NO_ACTION {
                    continue;
                }
                let digest = e
                    .digests
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .map(|(_, d)| d.as_slice())
                    .ok_or_else(|| {
                        bad(format!("event {} has no {} digest", e.number, bank.name()))
                    })?;
                let old = pcrs
                    .entry((bank, e.pcr))
                    .or_insert_with(|| self.reset_value(bank, e.pcr));
                *old = extend(bank, old, digest);
            }
        }
        let mut out = PcrValues::new();
        for ((bank, pcr), v) in pcrs {
            out.insert(bank, u8::try_from(pcr).map_err(|_| bad("PCR index"))?, v)?;
        }
        Ok(out)
    }

    /// A PCR's value before anything is extended: zero, except PCR 0's last byte, which is the
    /// startup locality.
    pub fn reset_value(&self, bank: HashAlg, pcr: u32) -> Vec<u8> {
        let mut v = vec![0u8; bank.size()];
        if pcr == 0
            && let Some(last) = v.last_mut()
        {
            *last = self.startup_locality;
        }
        v
    }

    /// Replays the log and compares it with quoted PCR values over `selection`: every selected PCR
    /// must equal its replayed value (or its reset value, if the log never extends it). The first
    /// mismatch is named with its bank, PCR, replayed and quoted values.
    pub fn check_against(
        &self,
        selection: &PcrSelection,
        quoted: &PcrValues,
    ) -> Result<(), EvidenceError> {
        let replayed = self.replay()?;
        let banks = self.replay_banks();
        for (bank, pcr) in selection.pcrs() {
            if !banks.contains(&bank) {
                return Err(bad(format!(
                    "the log has no {} bank, which the quote covers",
                    bank.name()
                )));
            }
            let q = quoted
                .get(bank, pcr)
                .ok_or_else(|| bad(format!("no quoted value for {}:{pcr}", bank.name())))?;
            let reset = self.reset_value(bank, u32::from(pcr));
            let r = replayed.get(bank, pcr).unwrap_or(&reset);
            if r != q {
                return Err(EvidenceError::PcrReplay {
                    bank: bank.name(),
                    pcr,
                    replayed: hex(r),
                    quoted: hex(q),
                });
            }
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a crypto-agile event log (simulated boots for swtpm, tests). Each event's digests are
/// computed from its data unless given.
#[derive(Debug, Clone)]
pub struct LogBuilder {
    banks: Vec<HashAlg>,
    bytes: Vec<u8>,
}

impl LogBuilder {
    /// A log whose Spec ID event declares `banks` (SHA-1 is refused as a bank to write: writ's
    /// simulated boots are SHA-256 or better).
    pub fn new(banks: &[HashAlg]) -> Result<Self, EvidenceError> {
        if banks.is_empty() || banks.iter().any(|b| !b.is_strong()) {
            return Err(bad("a simulated log needs SHA-256 or better banks"));
        }
        let mut spec = SPEC_ID.to_vec();
        spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass: client
        spec.extend_from_slice(&[0, 2, 0, 2]); // spec 2.0, errata 0, UINTN size 2 (64-bit)
        spec.extend_from_slice(&u32::try_from(banks.len()).unwrap_or(0).to_le_bytes());
        for b in banks {
            spec.extend_from_slice(&b.id().to_le_bytes());
            spec.extend_from_slice(&u16::try_from(b.size()).unwrap_or(0).to_le_bytes());
        }
        spec.push(0); // vendorInfoSize
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 20]);
        bytes.extend_from_slice(&u32::try_from(spec.len()).unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&spec);
        Ok(LogBuilder {
            banks: banks.to_vec(),
            bytes,
        })
    }

    /// Appends an event whose digests are the hash of `data` in every bank; returns the digests
    /// (what the TPM must be extended with).
    pub fn measure(
        &mut self,
        pcr: u32,
        event_type: u32,
        data: &[u8],
    ) -> Result<Vec<(HashAlg, Vec<u8>)>, EvidenceError> {
        let digests = self
            .banks
            .iter()
            .map(|b| b.digest(data).map(|d| (*b, d)))
            .collect::<Result<Vec<_>, _>>()?;
        self.event(pcr, event_type, &digests, data)?;
        Ok(digests)
    }

    /// Appends an event with the given digests (one per bank, e.g. the Authenticode hash of an
    /// image whose bytes are not in the event data).
    pub fn event(
        &mut self,
        pcr: u32,
        event_type: u32,
        digests: &[(HashAlg, Vec<u8>)],
        data: &[u8],
    ) -> Result<(), EvidenceError> {
        if digests.len() != self.banks.len()
            || digests
                .iter()
                .zip(&self.banks)
                .any(|((b, d), want)| b != want || d.len() != b.size())
        {
            return Err(bad("one digest per declared bank, in order"));
        }
        self.bytes.extend_from_slice(&pcr.to_le_bytes());
        self.bytes.extend_from_slice(&event_type.to_le_bytes());
        self.bytes
            .extend_from_slice(&u32::try_from(digests.len()).unwrap_or(0).to_le_bytes());
        for (b, d) in digests {
            self.bytes.extend_from_slice(&b.id().to_le_bytes());
            self.bytes.extend_from_slice(d);
        }
        self.bytes.extend_from_slice(
            &u32::try_from(data.len())
                .map_err(|_| bad("event too large"))?
                .to_le_bytes(),
        );
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    /// The log.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// EV_EFI_VARIABLE_DRIVER_CONFIG: Secure Boot configuration variables (PCR 7).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// EV_EFI_ACTION: a string naming a firmware action (PCR 5: ExitBootServices).
pub const EV_EFI_ACTION: u32 = 0x8000_0007;

/// Largest EFI variable name accepted (in UTF-16 code units).
const MAX_VARIABLE_NAME: u64 = 1024;

/// A UEFI_VARIABLE_DATA event body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiVariable {
    /// The vendor GUID, in its in-memory byte order.
    pub guid: [u8; 16],
    /// The variable name.
    pub name: String,
    /// The variable's data.
    pub data: Vec<u8>,
}

impl EfiVariable {
    /// Parses UEFI_VARIABLE_DATA (lengths bounded; the whole event data must be consumed).
    pub fn parse(data: &[u8]) -> Result<Self, EvidenceError> {
        Self::parse_inner(data, true)
    }

    /// As [`EfiVariable::parse`], but bytes after the variable's data are tolerated: some
    /// firmware logs EV_EFI_VARIABLE_AUTHORITY with a VariableDataLength shorter than what it
    /// measured. For describing events only; policy reads variables with [`EfiVariable::parse`].
    pub fn parse_lenient(data: &[u8]) -> Result<Self, EvidenceError> {
        Self::parse_inner(data, false)
    }

    fn parse_inner(data: &[u8], strict: bool) -> Result<Self, EvidenceError> {
        let mut r = Le { buf: data, pos: 0 };
        let guid: [u8; 16] = r.bytes(16)?.try_into().map_err(|_| bad("GUID"))?;
        let name_len = u64::from_le_bytes(r.bytes(8)?.try_into().map_err(|_| bad("name length"))?);
        let data_len = u64::from_le_bytes(r.bytes(8)?.try_into().map_err(|_| bad("data length"))?);
        if name_len > MAX_VARIABLE_NAME || data_len > MAX_EVENT_DATA as u64 {
            return Err(bad("EFI variable name or data too long"));
        }
        let name_bytes = r.bytes(usize::try_from(name_len * 2).map_err(|_| bad("name length"))?)?;
        let units: Vec<u16> = name_bytes
            .chunks_exact(2)
            .map(|c| match c {
                [a, b] => u16::from_le_bytes([*a, *b]),
                _ => 0,
            })
            .collect();
        let name =
            String::from_utf16(&units).map_err(|_| bad("EFI variable name is not UTF-16"))?;
        let value = r
            .bytes(usize::try_from(data_len).map_err(|_| bad("data length"))?)?
            .to_vec();
        if strict && !r.done() {
            return Err(bad("trailing bytes after UEFI_VARIABLE_DATA"));
        }
        Ok(EfiVariable {
            guid,
            name,
            data: value,
        })
    }

    /// The EFI_SIGNATURE_LISTs of a signature database variable (PK, KEK, db, dbx).
    pub fn signature_lists(&self) -> Result<Vec<SignatureList>, EvidenceError> {
        SignatureList::parse_all(&self.data)
    }
}

/// An EFI_SIGNATURE_LIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureList {
    /// SignatureType (e.g. EFI_CERT_X509_GUID, EFI_CERT_SHA256_GUID).
    pub signature_type: [u8; 16],
    /// Each EFI_SIGNATURE_DATA: (SignatureOwner, signature bytes).
    pub signatures: Vec<([u8; 16], Vec<u8>)>,
}

impl SignatureList {
    /// Parses a run of EFI_SIGNATURE_LISTs, honouring SignatureHeaderSize (the header is skipped,
    /// not misread as signatures).
    pub fn parse_all(mut data: &[u8]) -> Result<Vec<Self>, EvidenceError> {
        let mut lists = Vec::new();
        while !data.is_empty() {
            let mut r = Le { buf: data, pos: 0 };
            let signature_type: [u8; 16] = r.bytes(16)?.try_into().map_err(|_| bad("GUID"))?;
            let list_size = r.u32()? as usize;
            let header_size = r.u32()? as usize;
            let sig_size = r.u32()? as usize;
            if list_size < 28 || list_size > data.len() {
                return Err(bad(format!("EFI_SIGNATURE_LIST size {list_size}")));
            }
            let body_len = list_size - 28;
            if header_size > body_len {
                return Err(bad("SignatureHeaderSize beyond the list"));
            }
            r.bytes(header_size)?;
            let sigs_len = body_len - header_size;
            if sig_size < 16 || !sigs_len.is_multiple_of(sig_size) {
                return Err(bad(format!(
                    "SignatureSize {sig_size} does not divide the list"
                )));
            }
            let mut signatures = Vec::new();
            for _ in 0..sigs_len / sig_size {
                let owner: [u8; 16] = r.bytes(16)?.try_into().map_err(|_| bad("GUID"))?;
                signatures.push((owner, r.bytes(sig_size - 16)?.to_vec()));
            }
            lists.push(SignatureList {
                signature_type,
                signatures,
            });
            data = data.get(list_size..).unwrap_or_default();
        }
        Ok(lists)
    }
}

impl Event {
    /// Whether the event data hashes, in every known bank (at least one), to the logged digest.
    /// Only meaningful
    /// for events whose digest is defined as the hash of their data (EFI variables of PCR 7,
    /// separators, EFI actions); policy reads those and trusts nothing else about them.
    pub fn data_matches_digests(&self) -> bool {
        // Every digest of a bank writ can compute must match, and there must be at least one: a
        // log whose banks are all unknown (e.g. SM3 only) proves nothing about the data.
        let mut checked = 0usize;
        let all_match = self.digests.iter().all(|(alg, d)| {
            let computed = match HashAlg::from_id(*alg) {
                Some(HashAlg::Sha1) => Some(sha1::Sha1::digest(&self.data).to_vec()),
                Some(h) => h.digest(&self.data).ok(),
                None => return true,
            };
            checked += 1;
            computed.is_some_and(|c| &c == d)
        });
        all_match && checked > 0
    }

    /// The EFI variable of an EV_EFI_VARIABLE_DRIVER_CONFIG event, checked against its digests.
    pub fn driver_config(&self) -> Result<Option<EfiVariable>, EvidenceError> {
        if self.event_type != EV_EFI_VARIABLE_DRIVER_CONFIG {
            return Ok(None);
        }
        if !self.data_matches_digests() {
            return Err(bad(format!(
                "event {}: the variable's data does not hash to its logged digest",
                self.number
            )));
        }
        EfiVariable::parse(&self.data).map(Some)
    }
}

impl EventLog {
    /// The Secure Boot state the log measured, as [`EventLog::pcr7_config`] reads it (PCR 7
    /// before its separator, by GUID and name, exactly once, data hashing to its digests).
    /// `None` if the log never measures it there; an error if it cannot be established.
    pub fn secure_boot(&self) -> Result<Option<bool>, EvidenceError> {
        match self.pcr7_config().secure_boot {
            Ok(f) => Ok(Some(f.value)),
            Err(e) if e.code == "secure_boot" && e.event.is_none() => Ok(None),
            Err(e) => Err(bad(e.message)),
        }
    }

    /// Whether ExitBootServices was measured (PCR 5, EV_EFI_ACTION, data matching its digest).
    pub fn exit_boot_services(&self) -> bool {
        self.events.iter().any(|e| {
            e.pcr == 5
                && e.event_type == EV_EFI_ACTION
                && e.data.starts_with(b"Exit Boot Services Invocation")
                && e.data_matches_digests()
        })
    }
}

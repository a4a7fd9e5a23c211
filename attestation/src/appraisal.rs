//! Appraisal of verified TPM evidence against a reference-value profile, yielding an AR4SI trust
//! vector, an EAR status and, for every failed rule, a reason that names the rule, the PCR and
//! bank, the event, and what was expected and found.
//!
//! The profile format is documented in `docs/reference-profiles.md`. Appraisal reads only
//! authenticated evidence: the PCR values of a quote whose signature, nonce and digest were
//! verified ([`VerifiedQuote`]), the event log only as far as it replays to those values, and an
//! event's data only where it hashes to the event's digests. Unknown is never affirming: a fact
//! the log does not establish, a PCR the quote does not cover or the log never extends, or an
//! all-zero PCR is a failed rule, never a pass.
//!
//! Which claim a rule feeds: PCRs 4 and 8-15, and the boot-application rule, feed `executables`;
//! the other PCRs, Secure Boot, dbx and ExitBootServices feed `configuration`; the TPM's
//! manufacturer and firmware version feed `hardware`. `instance-identity` is left to the caller
//! (it depends on the AK's binding to an enrolled EK, which appraisal does not see).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::EvidenceError;
use crate::eventlog::{
    EV_EFI_ACTION, EV_NO_ACTION, EV_UNUSED, Event, EventLog, Fact, FactError, event_type_name,
};
use crate::evidence::{TpmAttributes, VerifiedQuote};
use crate::tpm::HashAlg;

/// The version of the profile format this code reads.
pub const PROFILE_VERSION: u32 = 1;
/// Largest profile accepted.
pub const MAX_PROFILE: usize = 1024 * 1024;
/// Most values accepted in one set (PCR values, boot applications).
const MAX_SET: usize = 4096;

/// PCR 4: boot applications.
const PCR_BOOT_APPS: u8 = 4;
/// PCR 5: boot manager configuration, GPT, ExitBootServices.
const PCR_EBS: u8 = 5;
/// PCR 7: Secure Boot policy.
const PCR_SECURE_BOOT: u8 = 7;

/// A reference-value profile for one platform class (the JSON file is the documented format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The format version ([`PROFILE_VERSION`]).
    pub writ_reference_profile: u32,
    /// A name for people (e.g. `dell-r650-bios-2.19`).
    pub name: String,
    /// The bank every value and digest below is in: `sha256`, `sha384` or `sha512`.
    pub bank: String,
    /// Accepted values per PCR index: a set each, so fleets with several firmware versions fit.
    /// Keys are canonical decimal PCR numbers; a key given twice is refused.
    #[serde(deserialize_with = "pcr_map")]
    pub pcrs: BTreeMap<u8, Vec<String>>,
    /// Required Secure Boot state, read from the SecureBoot variable measured into PCR 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Whether ExitBootServices must be measured (PCR 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_boot_services: Option<bool>,
    /// Allowed digests (in `bank`) of every image measured into PCR 4; anything else PCR 4
    /// measures, other than separators and EFI actions, is refused whatever its event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_applications: Option<Vec<String>>,
    /// The least number of entries the measured dbx (forbidden signatures) must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_dbx_entries: Option<usize>,
    /// Allowed TPM manufacturers, as the EK certificate names them (`id:49424D00`) or as the
    /// vendor string that ID spells (`IBM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_manufacturers: Option<Vec<String>>,
    /// The least TPM firmware version (the quote's firmwareVersion, a 64-bit number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tpm_firmware: Option<u64>,
    /// Whether the runtime's holder key must be bound to the attested PCR values: its authPolicy
    /// TPM2_PolicyPCR over the quoted selection and values, then TPM2_PolicyAuthValue, with
    /// userWithAuth clear ([`crate::tpm::policy::pcr_and_auth_value`]). Not an appraisal rule: the
    /// appliance refuses an attestation whose holder key is not so bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_pcr_policy: Option<bool>,
}

/// Reads `pcrs` strictly: canonical decimal keys ("7", not "07" or "+7"), none twice (JSON
/// parsers differ on duplicate keys; a reviewer must see what the code uses).
fn pcr_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u8, Vec<String>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<u8, Vec<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of PCR numbers to lists of hex values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, Vec<String>>()? {
                let canonical = k == "0" || (!k.starts_with('0') && !k.is_empty());
                let pcr: u8 = k
                    .parse()
                    .ok()
                    .filter(|_| canonical && k.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        A::Error::custom(format!("PCR key {k:?} is not a canonical PCR number"))
                    })?;
                if out.insert(pcr, v).is_some() {
                    return Err(A::Error::custom(format!("PCR {pcr} is given twice")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// A profile, checked and ready to appraise with.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    profile: Profile,
    bank: HashAlg,
    pcrs: BTreeMap<u8, BTreeSet<Vec<u8>>>,
    boot_applications: Option<BTreeSet<Vec<u8>>>,
    id: String,
}

fn profile_error(why: impl Into<String>) -> EvidenceError {
    EvidenceError::Profile(why.into())
}

fn decode_value(what: &str, hex: &str, size: usize) -> Result<Vec<u8>, EvidenceError> {
    let s = hex.strip_prefix("0x").unwrap_or(hex);
    if s.len() != size * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(profile_error(format!(
            "{what}: {hex:?} is not a {size}-byte hex value"
        )));
    }
    (0..size)
        .map(|i| {
            s.get(i * 2..i * 2 + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| profile_error(format!("{what}: {hex:?} is not hex")))
        })
        .collect()
}

impl LoadedProfile {
    /// Parses and checks a profile: a known version and bank (SHA-1 is too weak to appraise
    /// with), at least one PCR, no empty set, values of the bank's size, no all-zero or all-ones
    /// value (those mean "never measured", never a reference).
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_PROFILE {
            return Err(profile_error(format!(
                "the profile is larger than {MAX_PROFILE} bytes"
            )));
        }
        let profile: Profile = serde_json::from_slice(bytes)
            .map_err(|e| profile_error(format!("not a reference profile: {e}")))?;
        let id = format!("sha256:{}", hex(&sha256(bytes)));
        Self::new(profile, id)
    }

    fn new(profile: Profile, id: String) -> Result<Self, EvidenceError> {
        if profile.writ_reference_profile != PROFILE_VERSION {
            return Err(profile_error(format!(
                "profile version {} (this writ reads {PROFILE_VERSION})",
                profile.writ_reference_profile
            )));
        }
        let bank = HashAlg::from_name(&profile.bank)
            .ok_or_else(|| profile_error(format!("unknown bank {:?}", profile.bank)))?;
        if !bank.is_strong() {
            return Err(EvidenceError::HashTooWeak(format!(
                "the profile's bank is {}; appraise with sha256 or stronger",
                bank.name()
            )));
        }
        if profile.pcrs.is_empty() {
            return Err(profile_error(
                "the profile has no reference PCR values (an empty reference set accepts nothing)",
            ));
        }
        let mut pcrs = BTreeMap::new();
        for (pcr, values) in &profile.pcrs {
            if *pcr >= 24 {
                return Err(profile_error(format!("PCR {pcr} does not exist")));
            }
            if values.is_empty() || values.len() > MAX_SET {
                return Err(profile_error(format!(
                    "pcrs.{pcr}: {} accepted values (1 to {MAX_SET})",
                    values.len()
                )));
            }
            let mut set = BTreeSet::new();
            for v in values {
                let what = format!("pcrs.{pcr}");
                let d = decode_value(&what, v, bank.size())?;
                if is_unmeasured(&d) {
                    return Err(profile_error(format!(
                        "{what}: {v} is an unmeasured PCR's value, not a reference"
                    )));
                }
                set.insert(d);
            }
            pcrs.insert(*pcr, set);
        }
        let boot_applications = match &profile.boot_applications {
            None => None,
            Some(list) if list.is_empty() || list.len() > MAX_SET => {
                return Err(profile_error(format!(
                    "boot_applications: {} digests (1 to {MAX_SET})",
                    list.len()
                )));
            }
            Some(list) => Some(
                list.iter()
                    .map(|v| decode_value("boot_applications", v, bank.size()))
                    .collect::<Result<BTreeSet<_>, _>>()?,
            ),
        };
        if let Some(m) = &profile.tpm_manufacturers
            && m.is_empty()
        {
            return Err(profile_error(
                "tpm_manufacturers is empty (leave it out to accept any)",
            ));
        }
        if profile.exit_boot_services == Some(false) {
            return Err(profile_error(
                "exit_boot_services: false is not a rule (leave it out)",
            ));
        }
        Ok(LoadedProfile {
            profile,
            bank,
            pcrs,
            boot_applications,
            id,
        })
    }

    /// The profile as written.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The profile's identity: `sha256:` + the SHA-256 of the file as loaded (the EAR's
    /// appraisal policy ID).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bank appraised.
    pub fn bank(&self) -> HashAlg {
        self.bank
    }

    /// Whether the profile has a rule feeding (`configuration`, `executables`).
    pub fn feeds(&self) -> (bool, bool) {
        let p = &self.profile;
        let exec_pcr = self.pcrs.keys().any(|k| claim_of(*k) == Claim::Executables);
        let config_pcr = self
            .pcrs
            .keys()
            .any(|k| claim_of(*k) == Claim::Configuration);
        (
            config_pcr
                || p.secure_boot.is_some()
                || p.min_dbx_entries.is_some()
                || p.exit_boot_services.is_some(),
            exec_pcr || p.boot_applications.is_some(),
        )
    }

    /// The PCRs this profile reads (reference values and the facts' PCRs): the quote must cover
    /// each of them in the profile's bank.
    pub fn read_pcrs(&self) -> BTreeSet<u8> {
        let mut out: BTreeSet<u8> = self.pcrs.keys().copied().collect();
        let p = &self.profile;
        if p.secure_boot.is_some() || p.min_dbx_entries.is_some() {
            out.insert(PCR_SECURE_BOOT);
        }
        if p.exit_boot_services == Some(true) {
            out.insert(PCR_EBS);
        }
        if p.boot_applications.is_some() {
            out.insert(PCR_BOOT_APPS);
        }
        out
    }
}

fn is_unmeasured(v: &[u8]) -> bool {
    v.iter().all(|b| *b == 0) || v.iter().all(|b| *b == 0xff)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An EAR status (AR4SI trust tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No claim could be affirmed.
    None,
    /// Every appraised claim affirmed.
    Affirming,
    /// A claim is in the warning tier.
    Warning,
    /// A claim is contraindicated.
    Contraindicated,
}

impl Status {
    /// The tier of an AR4SI claim value (0 none, 2-31 affirming, 32-95 warning, 96-127 and
    /// negative contraindicated).
    pub fn of_claim(v: i8) -> Status {
        match v {
            0 | 1 => Status::None,
            2..=31 => Status::Affirming,
            32..=95 => Status::Warning,
            _ => Status::Contraindicated,
        }
    }
    /// The EAR spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Affirming => "affirming",
            Status::Warning => "warning",
            Status::Contraindicated => "contraindicated",
        }
    }
}

/// An AR4SI trustworthiness claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Claim {
    /// `instance-identity`.
    InstanceIdentity,
    /// `configuration`.
    Configuration,
    /// `executables`.
    Executables,
    /// `hardware`.
    Hardware,
}

impl Claim {
    /// The AR4SI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::InstanceIdentity => "instance-identity",
            Claim::Configuration => "configuration",
            Claim::Executables => "executables",
            Claim::Hardware => "hardware",
        }
    }
}

/// AR4SI claim values writ assigns (draft-ietf-rats-ar4si, section 2.3).
pub mod values {
    /// Cryptographic validation of the evidence failed (the log contradicts the quote, or an
    /// event's data contradicts its digest).
    pub const CRYPTO_FAILED: i8 = 99;
    /// `configuration`: a known and approved configuration.
    pub const APPROVED_CONFIG: i8 = 2;
    /// `configuration`: elements relevant to security are unavailable to the verifier.
    pub const UNAVAILABLE_CONFIG: i8 = 36;
    /// `configuration`: unsupportable.
    pub const UNSUPPORTABLE_CONFIG: i8 = 96;
    /// `executables`: recognized and approved boot-time executables.
    pub const APPROVED_BOOT: i8 = 3;
    /// `executables`: unrecognized (evidence of what ran is missing).
    pub const UNRECOGNIZED_RUNTIME: i8 = 33;
    /// `executables`: contraindicated.
    pub const CONTRAINDICATED_RUNTIME: i8 = 96;
    /// `hardware`: genuine.
    pub const GENUINE_HARDWARE: i8 = 2;
    /// `hardware`: genuine, with known vulnerabilities (firmware below the minimum).
    pub const UNSAFE_HARDWARE: i8 = 32;
    /// `hardware`: not recognized (a manufacturer the profile does not allow).
    pub const UNRECOGNIZED_HARDWARE: i8 = 97;
    /// `instance-identity`: a recognized instance (the quoting AK is bound, by credential
    /// activation, to an enrolled EK).
    pub const TRUSTWORTHY_INSTANCE: i8 = 2;
    /// `instance-identity`: contraindicated (the TPM's counters went backwards: the TPM was
    /// cleared or its state restored, or the evidence is replayed).
    pub const UNTRUSTWORTHY_INSTANCE: i8 = 96;
}

/// The AR4SI trustworthiness vector (claims writ does not appraise stay 0, "no claim").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrustVector {
    /// instance-identity
    #[serde(rename = "instance-identity")]
    pub instance_identity: i8,
    /// configuration
    pub configuration: i8,
    /// executables
    pub executables: i8,
    /// file-system
    #[serde(rename = "file-system")]
    pub file_system: i8,
    /// hardware
    pub hardware: i8,
    /// runtime-opaque
    #[serde(rename = "runtime-opaque")]
    pub runtime_opaque: i8,
    /// storage-opaque
    #[serde(rename = "storage-opaque")]
    pub storage_opaque: i8,
    /// sourced-data
    #[serde(rename = "sourced-data")]
    pub sourced_data: i8,
}

impl TrustVector {
    fn slot(&mut self, c: Claim) -> &mut i8 {
        match c {
            Claim::InstanceIdentity => &mut self.instance_identity,
            Claim::Configuration => &mut self.configuration,
            Claim::Executables => &mut self.executables,
            Claim::Hardware => &mut self.hardware,
        }
    }

    /// Lowers a claim to `v` unless it already holds a worse value.
    fn worsen(&mut self, c: Claim, v: i8) {
        let slot = self.slot(c);
        let rank = |x: i8| (Status::of_claim(x), x);
        if *slot == 0 || rank(v) > rank(*slot) {
            *slot = v;
        }
    }

    fn all(&self) -> [i8; 8] {
        [
            self.instance_identity,
            self.configuration,
            self.executables,
            self.file_system,
            self.hardware,
            self.runtime_opaque,
            self.storage_opaque,
            self.sourced_data,
        ]
    }
}

/// Why a rule failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// A stable error code (`pcr_value`, `pcr_replay`, `secure_boot`, ...).
    pub code: &'static str,
    /// The claim it lowers.
    pub claim: Claim,
    /// The profile rule (`pcrs.7`, `secure_boot`, ...) or evidence check (`replay`, `event_data`).
    pub rule: String,
    /// The PCR, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr: Option<u8>,
    /// The bank, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank: Option<&'static str>,
    /// The event's number in the log, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<usize>,
    /// What the profile or the evidence required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// The whole explanation, for people.
    pub message: String,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.rule, self.message)
    }
}

/// The result of an appraisal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Appraisal {
    /// The overall status.
    pub status: Status,
    /// The trust vector.
    pub vector: TrustVector,
    /// Every failed rule, in the order checked.
    pub reasons: Vec<Reason>,
    /// The profile's identity.
    pub policy_id: String,
}

impl Appraisal {
    fn finish(mut self) -> Self {
        self.status = status_of(&self.vector);
        self
    }

    /// An appraisal of evidence that could not be read at all (an event log that does not
    /// parse): `reason` at `value`, nothing affirmed.
    pub fn unreadable(policy_id: &str, value: i8, reason: Reason) -> Self {
        let mut a = Appraisal {
            status: Status::None,
            vector: TrustVector::default(),
            reasons: Vec::new(),
            policy_id: policy_id.to_string(),
        };
        a.fail(value, reason);
        a
    }

    /// Adds a failed check made outside the appraisal (the appliance's comparison of the TPM's
    /// counters with the last attestation) and recomputes the status.
    pub fn fail(&mut self, value: i8, reason: Reason) {
        self.vector.worsen(reason.claim, value);
        self.reasons.push(reason);
        self.status = status_of(&self.vector);
    }

    /// Sets `instance-identity` (the caller knows whether the AK is bound to an enrolled EK)
    /// and recomputes the status.
    pub fn set_instance_identity(&mut self, value: i8) {
        self.vector.instance_identity = value;
        self.status = status_of(&self.vector);
    }
}

/// Affirming only if configuration and executables were both affirmed and nothing is worse;
/// otherwise the worst tier of any claim, and `none` if nothing was affirmed.
fn status_of(v: &TrustVector) -> Status {
    let worst = v
        .all()
        .iter()
        .map(|x| Status::of_claim(*x))
        .max()
        .unwrap_or(Status::None);
    if worst > Status::Affirming {
        return worst;
    }
    if Status::of_claim(v.configuration) == Status::Affirming
        && Status::of_claim(v.executables) == Status::Affirming
    {
        Status::Affirming
    } else {
        Status::None
    }
}

/// The claim a PCR's value feeds.
fn claim_of(pcr: u8) -> Claim {
    if pcr == PCR_BOOT_APPS || (8..=15).contains(&pcr) {
        Claim::Executables
    } else {
        Claim::Configuration
    }
}

fn mismatch_value(c: Claim) -> i8 {
    match c {
        Claim::Executables => values::CONTRAINDICATED_RUNTIME,
        Claim::Hardware => values::UNRECOGNIZED_HARDWARE,
        _ => values::UNSUPPORTABLE_CONFIG,
    }
}

fn missing_value(c: Claim) -> i8 {
    match c {
        Claim::Executables => values::UNRECOGNIZED_RUNTIME,
        Claim::Hardware => values::UNRECOGNIZED_HARDWARE,
        _ => values::UNAVAILABLE_CONFIG,
    }
}

struct Appraiser<'a> {
    profile: &'a LoadedProfile,
    log: &'a EventLog,
    out: Appraisal,
}

impl Appraiser<'_> {
    fn fail(&mut self, value: i8, r: Reason) {
        self.out.vector.worsen(r.claim, value);
        self.out.reasons.push(r);
    }

    fn reason(&self, code: &'static str, claim: Claim, rule: impl Into<String>) -> Reason {
        Reason {
            code,
            claim,
            rule: rule.into(),
            pcr: None,
            bank: None,
            event: None,
            expected: None,
            found: None,
            message: String::new(),
        }
    }
}

/// What enrollment established about the TPM behind an AK. Only the enrolling code constructs
/// it: after proving (by credential activation) that the quoting AK lives in the TPM whose
/// verified EK certificate carried these attributes. Without that proof there is no identity:
/// pass `None`, and `hardware` makes no claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    attributes: TpmAttributes,
    endorsement_hierarchy: bool,
}

impl TpmIdentity {
    /// `attributes` from the verified EK certificate of the TPM the AK was proven to live in;
    /// `ak_in_endorsement_hierarchy` if the AK is known to be a child of the EK hierarchy (a TPM
    /// obfuscates a quote's firmwareVersion for keys of other hierarchies, so the firmware rule
    /// reads it only then).
    pub fn enrolled(attributes: TpmAttributes, ak_in_endorsement_hierarchy: bool) -> Self {
        TpmIdentity {
            attributes,
            endorsement_hierarchy: ak_in_endorsement_hierarchy,
        }
    }

    /// The EK certificate's TPM attributes.
    pub fn attributes(&self) -> &TpmAttributes {
        &self.attributes
    }
}

/// Appraises a verified quote and the event log that claims to explain it against a profile.
/// `tpm` is the enrolled TPM's identity (`None` if none was established: `hardware` then makes no
/// claim, and the manufacturer and firmware rules fail as unknown).
pub fn appraise(
    profile: &LoadedProfile,
    log: &EventLog,
    quote: &VerifiedQuote,
    tpm: Option<&TpmIdentity>,
) -> Appraisal {
    let mut a = Appraiser {
        profile,
        log,
        out: Appraisal {
            status: Status::None,
            vector: TrustVector::default(),
            reasons: Vec::new(),
            policy_id: profile.id().to_string(),
        },
    };
    let bank = profile.bank();
    let read = profile.read_pcrs();

    // 1. The log must carry the bank, and replay to the quoted values in every bank it shares
    //    with the quote. PCRs whose replay fails are not explained by the log: no fact is read
    //    from their events.
    let mut unexplained: BTreeSet<u8> = BTreeSet::new();
    let has_bank = log.replay_banks().contains(&bank);
    if !has_bank {
        let declared: Vec<String> = log
            .banks
            .iter()
            .map(|(id, _)| {
                HashAlg::from_id(*id)
                    .map(|h| h.name().to_string())
                    .unwrap_or_else(|| format!("{id:#06x}"))
            })
            .collect();
        for c in [Claim::Configuration, Claim::Executables] {
            let mut r = a.reason("bank_missing", c, "bank");
            r.bank = Some(bank.name());
            r.expected = Some(bank.name().to_string());
            r.found = Some(declared.join(","));
            r.message = format!(
                "the profile appraises the {} bank; the event log declares only {}",
                bank.name(),
                declared.join(", ")
            );
            a.fail(missing_value(c), r);
        }
        unexplained.extend(0..24);
    }
    let replayed = match log.replay() {
        Ok(v) => Some(v),
        Err(e) => {
            for c in [Claim::Configuration, Claim::Executables] {
                let mut r = a.reason("event_log", c, "replay");
                r.message = format!("the event log does not replay: {e}");
                a.fail(values::CRYPTO_FAILED, r);
            }
            unexplained.extend(0..24);
            None
        }
    };
    if let Some(replayed) = &replayed {
        for (qbank, pcr) in quote.selection().pcrs() {
            if !log.replay_banks().contains(&qbank) {
                continue;
            }
            let Some(q) = quote.pcrs().get(qbank, pcr) else {
                continue;
            };
            let reset = log.reset_value(qbank, u32::from(pcr));
            let v = replayed.get(qbank, pcr).unwrap_or(&reset);
            if v != q {
                unexplained.insert(pcr);
                let c = claim_of(pcr);
                let mut r = a.reason("pcr_replay", c, "replay");
                r.pcr = Some(pcr);
                r.bank = Some(qbank.name());
                r.expected = Some(hex(v));
                r.found = Some(hex(q));
                r.message = format!(
                    "the event log replays {}:{pcr} to {}, the quote holds {}: the log does not \
                     describe this boot",
                    qbank.name(),
                    hex(v),
                    hex(q)
                );
                a.fail(values::CRYPTO_FAILED, r);
            }
        }
    }

    // 2. Every PCR the profile reads: quoted in the bank, measured, and (for reference values)
    //    one of the accepted values.
    let quoted_banks: BTreeSet<u8> = quote
        .selection()
        .pcrs()
        .filter(|(b, _)| *b == bank)
        .map(|(_, p)| p)
        .collect();
    for pcr in &read {
        let pcr = *pcr;
        let c = claim_of(pcr);
        let rule = format!("pcrs.{pcr}");
        let Some(q) = quote
            .pcrs()
            .get(bank, pcr)
            .filter(|_| quoted_banks.contains(&pcr))
        else {
            unexplained.insert(pcr);
            let mut r = a.reason("pcr_not_quoted", c, rule);
            r.pcr = Some(pcr);
            r.bank = Some(bank.name());
            r.message = format!(
                "the profile reads {}:{pcr}, which the quote does not cover",
                bank.name()
            );
            a.fail(missing_value(c), r);
            continue;
        };
        let extended = log
            .events
            .iter()
            .any(|e| e.pcr == u32::from(pcr) && e.event_type != EV_NO_ACTION);
        if is_unmeasured(q) || !extended {
            let mut r = a.reason("pcr_unmeasured", c, rule.clone());
            r.pcr = Some(pcr);
            r.bank = Some(bank.name());
            r.found = Some(hex(q));
            r.message = if extended {
                format!(
                    "{}:{pcr} holds {}: nothing was measured",
                    bank.name(),
                    hex(q)
                )
            } else {
                format!(
                    "the event log never extends {}:{pcr}: a PCR nothing measured proves nothing",
                    bank.name()
                )
            };
            a.fail(mismatch_value(c), r);
        }
        if let Some(accepted) = profile.pcrs.get(&pcr)
            && !accepted.contains(q)
        {
            let mut r = a.reason("pcr_value", c, rule);
            r.pcr = Some(pcr);
            r.bank = Some(bank.name());
            r.expected = Some(
                accepted
                    .iter()
                    .map(|v| hex(v))
                    .collect::<Vec<_>>()
                    .join(" | "),
            );
            r.found = Some(hex(q));
            r.message = format!(
                "{}:{pcr} is {}, not one of the profile's {} accepted value(s)",
                bank.name(),
                hex(q),
                accepted.len()
            );
            a.fail(mismatch_value(c), r);
        }
    }

    // 3. Event types: on a PCR the profile reads, an event of a reserved or unknown type is not
    //    something policy can vouch for (an attacker relabels a measurement to hide it).
    for e in &log.events {
        let Ok(pcr) = u8::try_from(e.pcr) else {
            continue;
        };
        if !read.contains(&pcr) || e.event_type == EV_NO_ACTION {
            continue;
        }
        if e.event_type == EV_UNUSED || event_type_name(e.event_type).is_none() {
            let c = claim_of(pcr);
            let mut r = a.reason("event_type", c, "event_type");
            r.pcr = Some(pcr);
            r.event = Some(e.number);
            r.found = Some(e.type_name());
            r.message = format!(
                "event {} on PCR {pcr} has type {}, which no firmware measures",
                e.number,
                e.type_name()
            );
            a.fail(values::CRYPTO_FAILED, r);
        }
    }

    // 4. Facts from the log, each only from PCRs the log explains.
    facts(&mut a, &unexplained);

    // 5. The TPM.
    tpm_rules(&mut a, quote, tpm);

    // A claim is affirmed only if a rule fed it and nothing lowered it: a profile that reads
    // nothing about executables leaves `executables` at "no claim", and the status at none.
    let (config_fed, exec_fed) = profile.feeds();
    if a.out.vector.configuration == 0 && config_fed {
        a.out.vector.configuration = values::APPROVED_CONFIG;
    }
    if a.out.vector.executables == 0 && exec_fed {
        a.out.vector.executables = values::APPROVED_BOOT;
    }
    a.out.finish()
}

/// A fact's PCR is usable only if quoted in the bank and explained by the log.
fn usable(a: &mut Appraiser<'_>, pcr: u8, rule: &str, unexplained: &BTreeSet<u8>) -> bool {
    if !unexplained.contains(&pcr) {
        return true;
    }
    let c = if pcr == PCR_BOOT_APPS {
        Claim::Executables
    } else {
        Claim::Configuration
    };
    let mut r = a.reason("fact_unverified", c, rule);
    r.pcr = Some(pcr);
    r.message = format!(
        "{rule} is read from PCR {pcr}, which the quote does not cover or the log does not \
         explain: the fact is unknown"
    );
    a.fail(missing_value(c), r);
    false
}

/// The EV_EFI_ACTION strings firmware measures into PCR 4 (PC Client PFP, section 10.4.4).
const PCR4_ACTIONS: [&[u8]; 2] = [
    b"Calling EFI Application from Boot Option",
    b"Returning from EFI Application from Boot Option",
];

/// A PCR 4 event that is not an image: a separator, or one of the defined actions (by content,
/// which must hash to the digests).
fn is_pcr4_marker(e: &Event) -> bool {
    e.is_separator()
        || (PCR4_ACTIONS.contains(&e.data.as_slice())
            && e.event_type == EV_EFI_ACTION
            && e.data_matches_digests())
}

fn fact_failure(
    a: &mut Appraiser<'_>,
    rule: &str,
    expected: String,
    FactError {
        code,
        event,
        message,
    }: FactError,
) {
    let mut r = a.reason(code, Claim::Configuration, rule);
    r.pcr = Some(PCR_SECURE_BOOT);
    r.event = event;
    r.expected = Some(expected);
    r.found = Some(if code == "event_data" {
        "unverifiable".into()
    } else {
        "not established".into()
    });
    r.message = message;
    let value = if code == "event_data" {
        values::CRYPTO_FAILED
    } else {
        values::UNSUPPORTABLE_CONFIG
    };
    a.fail(value, r);
}

fn facts(a: &mut Appraiser<'_>, unexplained: &BTreeSet<u8>) {
    let p = a.profile.profile().clone();
    let bank = a.profile.bank();
    let log = a.log;

    let wants_pcr7 = p.secure_boot.is_some() || p.min_dbx_entries.is_some();
    if wants_pcr7 && usable(a, PCR_SECURE_BOOT, "secure_boot", unexplained) {
        let f = log.pcr7_config();
        if let Some(want) = p.secure_boot {
            match f.secure_boot {
                Ok(Fact { value: state, .. }) if state == want => {}
                Ok(Fact {
                    value: state,
                    event,
                }) => {
                    let mut r = a.reason("secure_boot", Claim::Configuration, "secure_boot");
                    r.pcr = Some(PCR_SECURE_BOOT);
                    r.event = Some(event);
                    r.expected = Some(want.to_string());
                    r.found = Some(state.to_string());
                    r.message = format!(
                        "Secure Boot is {} (event {event}); the profile requires it {}",
                        if state { "on" } else { "off" },
                        if want { "on" } else { "off" }
                    );
                    a.fail(values::UNSUPPORTABLE_CONFIG, r);
                }
                Err(why) => fact_failure(a, "secure_boot", want.to_string(), why),
            }
        }
        if let Some(min) = p.min_dbx_entries {
            match f.dbx_entries {
                Ok(Fact { value: n, .. }) if n >= min => {}
                Ok(Fact { value: n, event }) => {
                    let mut r = a.reason("dbx", Claim::Configuration, "min_dbx_entries");
                    r.pcr = Some(PCR_SECURE_BOOT);
                    r.event = Some(event);
                    r.expected = Some(format!(">= {min}"));
                    r.found = Some(n.to_string());
                    r.message = format!(
                        "the measured dbx holds {n} entries, fewer than the profile's {min}: \
                         revoked boot images may still load"
                    );
                    a.fail(values::UNSUPPORTABLE_CONFIG, r);
                }
                Err(why) => fact_failure(a, "min_dbx_entries", format!(">= {min}"), why),
            }
        }
    }

    if p.exit_boot_services == Some(true)
        && usable(a, PCR_EBS, "exit_boot_services", unexplained)
        && !log.exit_boot_services()
    {
        let mut r = a.reason(
            "exit_boot_services",
            Claim::Configuration,
            "exit_boot_services",
        );
        r.pcr = Some(PCR_EBS);
        r.expected = Some("measured".into());
        r.found = Some("absent".into());
        r.message = "the log has no ExitBootServices measurement on PCR 5: the boot may not have \
                     left firmware, or the log stops early"
            .into();
        a.fail(values::UNAVAILABLE_CONFIG, r);
    }

    if let Some(allowed) = a.profile.boot_applications.clone()
        && usable(a, PCR_BOOT_APPS, "boot_applications", unexplained)
    {
        for e in log
            .events
            .iter()
            .filter(|e| e.pcr == u32::from(PCR_BOOT_APPS) && e.event_type != EV_NO_ACTION)
        {
            // Separators and the defined actions are recognized by their content; everything
            // else PCR 4 measures is an image, whatever its type says.
            if is_pcr4_marker(e) {
                continue;
            }
            let Some(d) = e
                .digests
                .iter()
                .find(|(alg, _)| *alg == bank.id())
                .map(|(_, d)| d)
            else {
                continue; // bank_missing already failed
            };
            if !allowed.contains(d) {
                let mut r = a.reason("boot_application", Claim::Executables, "boot_applications");
                r.pcr = Some(PCR_BOOT_APPS);
                r.bank = Some(bank.name());
                r.event = Some(e.number);
                r.found = Some(hex(d));
                r.message = format!(
                    "event {} ({}) measured {} into PCR 4, which is not an allowed boot \
                     application",
                    e.number,
                    e.type_name(),
                    hex(d)
                );
                a.fail(values::CONTRAINDICATED_RUNTIME, r);
            }
        }
    }
}

fn tpm_rules(a: &mut Appraiser<'_>, quote: &VerifiedQuote, tpm: Option<&TpmIdentity>) {
    let p = a.profile.profile().clone();
    if let Some(allowed) = &p.tpm_manufacturers {
        let found = tpm.and_then(|t| t.attributes.manufacturer.clone());
        let vendor = tpm.and_then(|t| t.attributes.vendor());
        let ok = found
            .as_ref()
            .is_some_and(|m| allowed.iter().any(|x| x == m))
            || vendor
                .as_ref()
                .is_some_and(|v| allowed.iter().any(|x| x == v));
        if !ok {
            let mut r = a.reason("tpm_manufacturer", Claim::Hardware, "tpm_manufacturers");
            r.expected = Some(allowed.join(" | "));
            r.found = Some(match (&found, &vendor) {
                (Some(m), Some(v)) => format!("{m} ({v})"),
                (Some(m), None) => m.clone(),
                _ => "unknown".into(),
            });
            r.message = match (tpm, found) {
                (None, _) => "no enrolled TPM identity: the TPM's manufacturer is unknown".into(),
                (Some(_), None) => "the EK certificate names no TPM manufacturer".into(),
                (Some(_), Some(m)) => format!("TPM manufacturer {m} is not allowed by the profile"),
            };
            a.fail(values::UNRECOGNIZED_HARDWARE, r);
        }
    }
    if let Some(min) = p.min_tpm_firmware {
        match tpm {
            Some(t) if t.endorsement_hierarchy => {
                if quote.firmware_version() < min {
                    let mut r = a.reason("tpm_firmware", Claim::Hardware, "min_tpm_firmware");
                    r.expected = Some(format!(">= {min:#x}"));
                    r.found = Some(format!("{:#x}", quote.firmware_version()));
                    r.message = format!(
                        "TPM firmware {:#x} is older than the profile's minimum {min:#x}",
                        quote.firmware_version()
                    );
                    a.fail(values::UNSAFE_HARDWARE, r);
                }
            }
            _ => {
                let mut r = a.reason("tpm_firmware", Claim::Hardware, "min_tpm_firmware");
                r.expected = Some(format!(">= {min:#x}"));
                r.found = Some("unknown".into());
                r.message = "the quote's firmwareVersion is trusted only from an AK enrolled in \
                             the endorsement hierarchy (a TPM obfuscates it for other keys)"
                    .into();
                a.fail(values::UNRECOGNIZED_HARDWARE, r);
            }
        }
    }
    if tpm.is_some() && a.out.vector.hardware == 0 {
        a.out.vector.hardware = values::GENUINE_HARDWARE;
    }
}

/// Builds a profile from a known-good machine (what Keylime's create_mb_policy does): the quoted
/// values of `pcrs` in `bank` (the log must replay to them), the Secure Boot state, the dbx size,
/// ExitBootServices, and the digests of everything PCR 4 measured. For an operator to review and
/// edit before use.
pub fn capture(
    name: &str,
    log: &EventLog,
    quote: &VerifiedQuote,
    bank: HashAlg,
    pcrs: &[u8],
) -> Result<Profile, EvidenceError> {
    if !bank.is_strong() {
        return Err(EvidenceError::HashTooWeak(format!(
            "capture in sha256 or stronger, not {}",
            bank.name()
        )));
    }
    log.check_against(quote.selection(), quote.pcrs())?;
    let mut values = BTreeMap::new();
    for pcr in pcrs {
        let v = quote.pcrs().get(bank, *pcr).ok_or_else(|| {
            profile_error(format!("the quote does not cover {}:{pcr}", bank.name()))
        })?;
        if is_unmeasured(v) {
            return Err(profile_error(format!(
                "{}:{pcr} was never measured on this machine; leave it out",
                bank.name()
            )));
        }
        values.insert(*pcr, vec![hex(v)]);
    }
    let covered = |pcr: u8| pcrs.contains(&pcr);
    let (secure_boot, min_dbx_entries) = if covered(PCR_SECURE_BOOT) {
        // What this machine's log does not establish is left out, for the operator to decide.
        let f = log.pcr7_config();
        (
            f.secure_boot.ok().map(|f| f.value),
            f.dbx_entries.ok().map(|f| f.value),
        )
    } else {
        (None, None)
    };
    let exit_boot_services = (covered(PCR_EBS) && log.exit_boot_services()).then_some(true);
    let boot_applications = if covered(PCR_BOOT_APPS) {
        let mut set = BTreeSet::new();
        for e in log
            .events
            .iter()
            .filter(|e| e.pcr == u32::from(PCR_BOOT_APPS) && e.event_type != EV_NO_ACTION)
        {
            if is_pcr4_marker(e) {
                continue;
            }
            if let Some((_, d)) = e.digests.iter().find(|(a, _)| *a == bank.id()) {
                set.insert(hex(d));
            }
        }
        (!set.is_empty()).then(|| set.into_iter().collect())
    } else {
        None
    };
    let profile = Profile {
        writ_reference_profile: PROFILE_VERSION,
        name: name.to_string(),
        bank: bank.name().to_string(),
        pcrs: values,
        secure_boot,
        exit_boot_services,
        boot_applications,
        min_dbx_entries,
        tpm_manufacturers: None,
        min_tpm_firmware: None,
        holder_pcr_policy: None,
    };
    // What capture writes must load.
    LoadedProfile::new(profile.clone(), String::new())?;
    Ok(profile)
}

//! A simulated UEFI measured boot, for swtpm (dev stack, demo and tests only).
//!
//! swtpm has no firmware, so nothing measures into it. This plays an event sequence modelled on
//! the real logs in shared/vectors (S-CRTM version, a firmware volume, the Secure Boot variables,
//! separators, a boot manager application, ExitBootServices) into the TPM's SHA-256 bank and
//! returns the matching crypto-agile event log, so attestation runs the real replay against a
//! real TPM. It only extends PCRs; it proves nothing about any platform.

use writ_attestation::eventlog::{EV_SEPARATOR, LogBuilder};
use writ_attestation::tpm::HashAlg;

use super::attester::Attester;
use crate::CustodyError;

/// Which platform state to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProfile {
    /// Secure Boot enabled (SecureBoot = 1).
    SecureBoot,
    /// Secure Boot disabled (SecureBoot = 0).
    NoSecureBoot,
}

const EV_S_CRTM_VERSION: u32 = 0x0000_0008;
const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
const EV_EFI_ACTION: u32 = 0x8000_0007;
const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;

/// EFI_GLOBAL_VARIABLE (8BE4DF61-93CA-11D2-AA0D-00E098032B8C) in its in-memory byte order.
const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
/// EFI_IMAGE_SECURITY_DATABASE_GUID (D719B2CB-3D3A-4596-A3BC-DAD00E67656F).
const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = [
    0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f,
];

/// UEFI_VARIABLE_DATA: VariableName GUID, name length and data length (UINT64, in characters
/// and bytes), the UTF-16LE name without terminator, the data.
fn variable(guid: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let utf16: Vec<u16> = name.encode_utf16().collect();
    let mut v = guid.to_vec();
    v.extend_from_slice(&(utf16.len() as u64).to_le_bytes());
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for c in utf16 {
        v.extend_from_slice(&c.to_le_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Plays the simulated boot into the TPM and returns the event log. Run it on a freshly reset TPM
/// (PCRs 0-7 at zero), once per boot.
pub fn simulate_boot(attester: &Attester, profile: BootProfile) -> Result<Vec<u8>, CustodyError> {
    let ev = |e: writ_attestation::EvidenceError| CustodyError::InvalidInput(e.to_string());
    let mut log = LogBuilder::new(&[HashAlg::Sha256]).map_err(ev)?;
    let measure = |log: &mut LogBuilder,
                   pcr: u32,
                   event_type: u32,
                   data: &[u8]|
     -> Result<(), CustodyError> {
        let digests = log.measure(pcr, event_type, data).map_err(ev)?;
        extend(attester, pcr, &digests)
    };
    // PCR 0: S-CRTM version and a firmware volume (logged by base and length; its digest is the
    // hash of the volume's bytes, here a fixed stand-in).
    measure(
        &mut log,
        0,
        EV_S_CRTM_VERSION,
        &utf16z("writ simulated firmware 1.0"),
    )?;
    let volume = b"writ simulated firmware volume".repeat(64);
    let blob = [
        0x0000_0000_fff0_0000u64.to_le_bytes(),
        (volume.len() as u64).to_le_bytes(),
    ]
    .concat();
    let digest = HashAlg::Sha256.digest(&volume).map_err(ev)?;
    log.event(
        0,
        EV_EFI_PLATFORM_FIRMWARE_BLOB,
        &[(HashAlg::Sha256, digest.clone())],
        &blob,
    )
    .map_err(ev)?;
    extend(attester, 0, &[(HashAlg::Sha256, digest)])?;
    // PCR 7: the Secure Boot configuration.
    let secure = u8::from(profile == BootProfile::SecureBoot);
    measure(
        &mut log,
        7,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        &variable(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[secure]),
    )?;
    for (guid, name, content) in [
        (
            &EFI_GLOBAL_VARIABLE,
            "PK",
            b"writ simulated platform key".as_slice(),
        ),
        (
            &EFI_GLOBAL_VARIABLE,
            "KEK",
            b"writ simulated key exchange key".as_slice(),
        ),
        (
            &EFI_IMAGE_SECURITY_DATABASE,
            "db",
            b"writ simulated allowed signatures".as_slice(),
        ),
        (
            &EFI_IMAGE_SECURITY_DATABASE,
            "dbx",
            b"writ simulated revoked signatures".as_slice(),
        ),
    ] {
        measure(
            &mut log,
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            &variable(guid, name, content),
        )?;
    }
    // Separators close the pre-OS phase on PCRs 0-7.
    for pcr in 0..8 {
        measure(&mut log, pcr, EV_SEPARATOR, &[0, 0, 0, 0])?;
    }
    // PCR 4: the boot manager (its Authenticode hash; the event data is the load event).
    let image = HashAlg::Sha256
        .digest(b"writ simulated boot manager image")
        .map_err(ev)?;
    log.event(
        4,
        EV_EFI_BOOT_SERVICES_APPLICATION,
        &[(HashAlg::Sha256, image.clone())],
        &[0u8; 32],
    )
    .map_err(ev)?;
    extend(attester, 4, &[(HashAlg::Sha256, image)])?;
    // PCR 5: ExitBootServices.
    measure(&mut log, 5, EV_EFI_ACTION, b"Exit Boot Services Invocation")?;
    measure(
        &mut log,
        5,
        EV_EFI_ACTION,
        b"Exit Boot Services Returned with Success",
    )?;
    Ok(log.into_bytes())
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn extend(
    attester: &Attester,
    pcr: u32,
    digests: &[(HashAlg, Vec<u8>)],
) -> Result<(), CustodyError> {
    for (bank, d) in digests {
        if *bank == HashAlg::Sha256 {
            let digest: [u8; 32] = d
                .as_slice()
                .try_into()
                .map_err(|_| CustodyError::InvalidInput("digest size".into()))?;
            let index =
                u8::try_from(pcr).map_err(|_| CustodyError::InvalidInput("PCR index".into()))?;
            attester.extend_pcr(index, &digest)?;
        }
    }
    Ok(())
}

//! The event sequence of writ's simulated UEFI measured boot (dev stack, demo and tests only).
//!
//! swtpm has no firmware, so nothing measures into it. This builds an event sequence modelled on
//! the real logs in shared/vectors (S-CRTM version, a firmware volume, the Secure Boot variables
//! with real EFI_SIGNATURE_LISTs, boot variables, separators, a boot manager application with its
//! device path, the GPT, ExitBootServices) and the SHA-256 digests to extend, so the attester can
//! play it into a TPM (`writ_hsm::tpm::simboot`) and tests can appraise the same log without
//! one. It proves nothing about any platform.

use super::typed::{
    EFI_CERT_SHA256, EFI_CERT_X509, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_GPT_EVENT,
    EV_EFI_PLATFORM_FIRMWARE_BLOB, EV_EFI_VARIABLE_AUTHORITY, EV_EFI_VARIABLE_BOOT,
    EV_S_CRTM_VERSION,
};
use super::{EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR, LogBuilder};
use crate::error::EvidenceError;
use crate::tpm::HashAlg;

/// Which platform state to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProfile {
    /// Secure Boot enabled (SecureBoot = 1).
    SecureBoot,
    /// Secure Boot disabled (SecureBoot = 0).
    NoSecureBoot,
}

pub use super::typed::{EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE};
/// The owner GUID writ's simulated signature lists carry.
const OWNER: [u8; 16] = *b"writ-simulated\0\0";

/// Entries in the simulated dbx.
pub const SIMULATED_DBX_ENTRIES: usize = 3;

/// A simulated boot: the log and what to extend, in order.
#[derive(Debug, Clone)]
pub struct SimulatedBoot {
    /// The crypto-agile event log (SHA-256 bank).
    pub log: Vec<u8>,
    /// (PCR, SHA-256 digest) in the order the TPM must be extended.
    pub extends: Vec<(u8, [u8; 32])>,
}

/// UEFI_VARIABLE_DATA: the vendor GUID, name length and data length (UINT64, in characters and
/// bytes), the UTF-16LE name without terminator, the data.
pub fn variable_data(guid: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
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

/// One EFI_SIGNATURE_LIST of `signature_type` with `entries` (each prefixed by the owner GUID),
/// and `header` as its SignatureHeader.
pub fn signature_list(signature_type: &[u8; 16], header: &[u8], entries: &[Vec<u8>]) -> Vec<u8> {
    let size = entries.first().map_or(16, |e| 16 + e.len());
    let total = 28 + header.len() + size * entries.len();
    let mut v = signature_type.to_vec();
    v.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_le_bytes());
    v.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    v.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
    v.extend_from_slice(header);
    for e in entries {
        v.extend_from_slice(&OWNER);
        v.extend_from_slice(e);
    }
    v
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// A device path: PciRoot(0)/Pci(0x1,0x1)/HD(1,GPT,...)/\EFI\BOOT\BOOTX64.EFI, End.
fn boot_device_path(disk_partition: &[u8; 16]) -> Vec<u8> {
    let mut p = Vec::new();
    // ACPI PciRoot(0): HID PNP0A03.
    p.extend_from_slice(&[0x02, 0x01, 12, 0]);
    p.extend_from_slice(&0x0a03_41d0u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    // PCI device 1, function 1.
    p.extend_from_slice(&[0x01, 0x01, 6, 0, 0x01, 0x01]);
    // Hard drive: partition 1, start 2048, 200 MiB, GPT signature.
    p.extend_from_slice(&[0x04, 0x01, 42, 0]);
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&2048u64.to_le_bytes());
    p.extend_from_slice(&409_600u64.to_le_bytes());
    p.extend_from_slice(disk_partition);
    p.extend_from_slice(&[0x02, 0x02]);
    // File path.
    let file = utf16z("\\EFI\\BOOT\\BOOTX64.EFI");
    p.extend_from_slice(&[0x04, 0x04]);
    p.extend_from_slice(&u16::try_from(4 + file.len()).unwrap_or(0).to_le_bytes());
    p.extend_from_slice(&file);
    // End of the path.
    p.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    p
}

/// UEFI_GPT_DATA for a disk with one EFI system partition.
fn gpt(disk: &[u8; 16], partition: &[u8; 16]) -> Vec<u8> {
    let mut v = b"EFI PART".to_vec();
    v.extend_from_slice(&0x0001_0000u32.to_le_bytes()); // revision 1.0
    v.extend_from_slice(&92u32.to_le_bytes()); // header size
    v.extend_from_slice(&0u32.to_le_bytes()); // header CRC (not checked by anyone reading the log)
    v.extend_from_slice(&0u32.to_le_bytes());
    for lba in [1u64, 2_097_151, 34, 2_097_118] {
        v.extend_from_slice(&lba.to_le_bytes());
    }
    v.extend_from_slice(disk);
    v.extend_from_slice(&2u64.to_le_bytes()); // partition entry LBA
    v.extend_from_slice(&128u32.to_le_bytes()); // number of entries
    v.extend_from_slice(&128u32.to_le_bytes()); // entry size
    v.extend_from_slice(&0u32.to_le_bytes()); // array CRC
    v.extend_from_slice(&1u64.to_le_bytes()); // NumberOfPartitions
    // The EFI system partition type C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
    v.extend_from_slice(&[
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ]);
    v.extend_from_slice(partition);
    v.extend_from_slice(&2048u64.to_le_bytes());
    v.extend_from_slice(&411_647u64.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    let mut name = utf16z("EFI System Partition");
    name.resize(72, 0);
    v.extend_from_slice(&name);
    v
}

/// The SHA-256 image digest the simulated boot manager measures into PCR 4.
pub fn simulated_boot_manager_digest() -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b"writ simulated boot manager image").into()
}

struct Builder {
    log: LogBuilder,
    extends: Vec<(u8, [u8; 32])>,
}

impl Builder {
    /// An event whose digest is the hash of its data.
    fn measure(&mut self, pcr: u8, event_type: u32, data: &[u8]) -> Result<(), EvidenceError> {
        let digests = self.log.measure(u32::from(pcr), event_type, data)?;
        self.push(pcr, &digests)
    }

    /// An event whose digest is given (images, firmware volumes).
    fn event(
        &mut self,
        pcr: u8,
        event_type: u32,
        digest: [u8; 32],
        data: &[u8],
    ) -> Result<(), EvidenceError> {
        let digests = vec![(HashAlg::Sha256, digest.to_vec())];
        self.log.event(u32::from(pcr), event_type, &digests, data)?;
        self.push(pcr, &digests)
    }

    fn push(&mut self, pcr: u8, digests: &[(HashAlg, Vec<u8>)]) -> Result<(), EvidenceError> {
        for (bank, d) in digests {
            if *bank == HashAlg::Sha256 {
                let d: [u8; 32] = d
                    .as_slice()
                    .try_into()
                    .map_err(|_| EvidenceError::EventLog("digest size".into()))?;
                self.extends.push((pcr, d));
            }
        }
        Ok(())
    }
}

/// Builds the simulated boot for `profile`.
pub fn simulated_boot(profile: BootProfile) -> Result<SimulatedBoot, EvidenceError> {
    use sha2::Digest;
    let mut b = Builder {
        log: LogBuilder::new(&[HashAlg::Sha256])?,
        extends: Vec::new(),
    };
    // PCR 0: S-CRTM version and a firmware volume (logged by base and length; its digest is the
    // hash of the volume's bytes, here a fixed stand-in).
    b.measure(0, EV_S_CRTM_VERSION, &utf16z("writ simulated firmware 1.0"))?;
    let volume = b"writ simulated firmware volume".repeat(64);
    let blob = [
        0x0000_0000_fff0_0000u64.to_le_bytes(),
        (volume.len() as u64).to_le_bytes(),
    ]
    .concat();
    b.event(
        0,
        EV_EFI_PLATFORM_FIRMWARE_BLOB,
        sha2::Sha256::digest(&volume).into(),
        &blob,
    )?;
    // PCR 7: the Secure Boot configuration, with signature databases as real lists.
    let secure = u8::from(profile == BootProfile::SecureBoot);
    b.measure(
        7,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        &variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[secure]),
    )?;
    let cert = |name: &str| format!("writ simulated {name} certificate").into_bytes();
    let dbx: Vec<Vec<u8>> = (0..SIMULATED_DBX_ENTRIES)
        .map(|i| sha2::Sha256::digest(format!("revoked image {i}")).to_vec())
        .collect();
    for (guid, name, content) in [
        (
            &EFI_GLOBAL_VARIABLE,
            "PK",
            signature_list(&EFI_CERT_X509, &[], &[cert("PK")]),
        ),
        (
            &EFI_GLOBAL_VARIABLE,
            "KEK",
            signature_list(&EFI_CERT_X509, &[], &[cert("KEK")]),
        ),
        (
            &EFI_IMAGE_SECURITY_DATABASE,
            "db",
            signature_list(&EFI_CERT_X509, &[], &[cert("db")]),
        ),
        (
            &EFI_IMAGE_SECURITY_DATABASE,
            "dbx",
            signature_list(&EFI_CERT_SHA256, &[], &dbx),
        ),
    ] {
        b.measure(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            &variable_data(guid, name, &content),
        )?;
    }
    // PCR 1: the boot order and the one boot option.
    let partition: [u8; 16] = *b"writ-sim-esp-001";
    let path = boot_device_path(&partition);
    b.measure(
        1,
        EV_EFI_VARIABLE_BOOT,
        &variable_data(&EFI_GLOBAL_VARIABLE, "BootOrder", &1u16.to_le_bytes()),
    )?;
    let mut option = 1u32.to_le_bytes().to_vec(); // LOAD_OPTION_ACTIVE
    option.extend_from_slice(&u16::try_from(path.len()).unwrap_or(0).to_le_bytes());
    option.extend_from_slice(&utf16z("writ simulated disk"));
    option.extend_from_slice(&path);
    b.measure(
        1,
        EV_EFI_VARIABLE_BOOT,
        &variable_data(&EFI_GLOBAL_VARIABLE, "Boot0001", &option),
    )?;
    // Separators close the pre-OS phase on PCRs 0-7.
    for pcr in 0..8 {
        b.measure(pcr, EV_SEPARATOR, &[0, 0, 0, 0])?;
    }
    // PCR 5: the boot disk's GPT.
    b.measure(5, EV_EFI_GPT_EVENT, &gpt(b"writ-sim-disk-01", &partition))?;
    // PCR 4: the boot manager (its Authenticode hash; the event data is the image load event).
    b.measure(
        4,
        EV_EFI_ACTION,
        b"Calling EFI Application from Boot Option",
    )?;
    let mut load = 0x0000_0000_7e00_0000u64.to_le_bytes().to_vec();
    load.extend_from_slice(&0x0002_0000u64.to_le_bytes());
    load.extend_from_slice(&0u64.to_le_bytes());
    load.extend_from_slice(&(path.len() as u64).to_le_bytes());
    load.extend_from_slice(&path);
    b.event(
        4,
        EV_EFI_BOOT_SERVICES_APPLICATION,
        simulated_boot_manager_digest(),
        &load,
    )?;
    // PCR 7: the db entry that authorized the boot manager (Secure Boot on only).
    if profile == BootProfile::SecureBoot {
        let mut entry = OWNER.to_vec();
        entry.extend_from_slice(&cert("db"));
        b.measure(
            7,
            EV_EFI_VARIABLE_AUTHORITY,
            &variable_data(&EFI_IMAGE_SECURITY_DATABASE, "db", &entry),
        )?;
    }
    // PCR 5: ExitBootServices.
    b.measure(5, EV_EFI_ACTION, b"Exit Boot Services Invocation")?;
    b.measure(
        5,
        EV_EFI_ACTION,
        b"Exit Boot Services Returned with Success",
    )?;
    Ok(SimulatedBoot {
        log: b.log.into_bytes(),
        extends: b.extends,
    })
}

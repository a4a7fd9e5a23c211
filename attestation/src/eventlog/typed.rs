//! Events typed for policy and for people: event type names, and the event data of the types
//! policy reads (EFI variables and their signature lists, boot services images with their device
//! paths, firmware blobs, GPT, separators, actions, S-CRTM version, IPL strings).
//!
//! A typed view describes what the event *says*. Only what is bound to a digest is evidence: the
//! data of variables, separators, actions and GPT events (checked against every digest writ can
//! compute, see [`Event::data_matches_digests`]); for images and firmware blobs, the logged digest
//! is the measurement and the data (addresses, device path) is an unauthenticated hint.

use serde::Serialize;

use super::{EfiVariable, Event, Le, SignatureList, bad};
use crate::error::EvidenceError;

/// Most device path nodes read from one path (deep or looping paths end with a clear error).
const MAX_PATH_NODES: usize = 64;
/// Most GPT partitions described.
const MAX_PARTITIONS: u64 = 256;

/// The name of an event type (TCG PC Client PFP, section 10.4.1), or `None` if unknown.
pub fn event_type_name(event_type: u32) -> Option<&'static str> {
    Some(match event_type {
        0x0000_0000 => "EV_PREBOOT_CERT",
        0x0000_0001 => "EV_POST_CODE",
        0x0000_0002 => "EV_UNUSED",
        0x0000_0003 => "EV_NO_ACTION",
        0x0000_0004 => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        0x0000_0009 => "EV_CPU_MICROCODE",
        0x0000_000A => "EV_PLATFORM_CONFIG_FLAGS",
        0x0000_000B => "EV_TABLE_OF_DEVICES",
        0x0000_000C => "EV_COMPACT_HASH",
        0x0000_000D => "EV_IPL",
        0x0000_000E => "EV_IPL_PARTITION_DATA",
        0x0000_000F => "EV_NONHOST_CODE",
        0x0000_0010 => "EV_NONHOST_CONFIG",
        0x0000_0011 => "EV_NONHOST_INFO",
        0x0000_0012 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x0000_0013 => "EV_POST_CODE2",
        0x8000_0000 => "EV_EFI_EVENT_BASE",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000C => "EV_EFI_VARIABLE_BOOT2",
        0x8000_000D => "EV_EFI_GPT_EVENT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00E1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00E2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        _ => return None,
    })
}

/// EV_POST_CODE.
pub const EV_POST_CODE: u32 = 0x0000_0001;
/// EV_UNUSED: reserved; no firmware logs it.
pub const EV_UNUSED: u32 = 0x0000_0002;
/// EV_S_CRTM_VERSION.
pub const EV_S_CRTM_VERSION: u32 = 0x0000_0008;
/// EV_IPL: strings measured by boot loaders (GRUB, shim).
pub const EV_IPL: u32 = 0x0000_000D;
/// EV_EFI_VARIABLE_BOOT: Boot#### and BootOrder (PCR 1).
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
/// EV_EFI_BOOT_SERVICES_APPLICATION: a UEFI application (boot manager, shim, boot loader).
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// EV_EFI_BOOT_SERVICES_DRIVER.
pub const EV_EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
/// EV_EFI_RUNTIME_SERVICES_DRIVER.
pub const EV_EFI_RUNTIME_SERVICES_DRIVER: u32 = 0x8000_0005;
/// EV_EFI_GPT_EVENT.
pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
/// EV_EFI_PLATFORM_FIRMWARE_BLOB.
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
/// EV_EFI_HANDOFF_TABLES.
pub const EV_EFI_HANDOFF_TABLES: u32 = 0x8000_0009;
/// EV_EFI_PLATFORM_FIRMWARE_BLOB2.
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
/// EV_EFI_VARIABLE_BOOT2.
pub const EV_EFI_VARIABLE_BOOT2: u32 = 0x8000_000C;
/// EV_EFI_VARIABLE_AUTHORITY: the db entry that authorized an image (PCR 7).
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;

/// EFI_GLOBAL_VARIABLE (8BE4DF61-93CA-11D2-AA0D-00E098032B8C), in-memory byte order.
pub const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
/// EFI_IMAGE_SECURITY_DATABASE_GUID (D719B2CB-3D3A-4596-A3BC-DAD00E67656F), in-memory byte order.
pub const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = [
    0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f,
];
/// EFI_CERT_SHA256_GUID (C1C41626-504C-4092-ACA9-41F936934328), in-memory byte order.
pub const EFI_CERT_SHA256: [u8; 16] = [
    0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28,
];
/// EFI_CERT_X509_GUID (A5C059A1-94E4-4AA7-87B5-AB155C2BF072), in-memory byte order.
pub const EFI_CERT_X509: [u8; 16] = [
    0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72,
];

/// A GUID in its registry form (the first three fields are little-endian in memory).
pub fn guid_string(g: &[u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = *g;
    let tail: String = rest.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([a0, a1, a2, a3]),
        u16::from_le_bytes([b0, b1]),
        u16::from_le_bytes([c0, c1]),
        tail.get(..4).unwrap_or_default(),
        tail.get(4..).unwrap_or_default()
    )
}

/// What an event's data says, by type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detail {
    /// No data worth reading, or a type writ does not type.
    None,
    /// A string (S-CRTM version, EFI action, POST code, IPL).
    Text {
        /// The text (lossy: invalid sequences are replaced).
        text: String,
    },
    /// A separator: 0 is the normal value, 1 an error separator.
    Separator {
        /// The 32-bit value.
        value: u32,
    },
    /// An EFI variable (UEFI_VARIABLE_DATA).
    Variable {
        /// The vendor GUID.
        guid: String,
        /// The variable name.
        name: String,
        /// The data's length.
        data_len: usize,
        /// SecureBoot's value.
        #[serde(skip_serializing_if = "Option::is_none")]
        enabled: Option<bool>,
        /// Signature lists (PK, KEK, db, dbx): (signature type, number of entries).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        signature_lists: Vec<SignatureListSummary>,
        /// A boot option's description (Boot####).
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// A boot option's device path (Boot####).
        #[serde(skip_serializing_if = "Option::is_none")]
        device_path: Option<String>,
    },
    /// A boot services application or driver, or a runtime driver (UEFI_IMAGE_LOAD_EVENT).
    Image {
        /// Where the image was loaded.
        location: u64,
        /// Its length in memory.
        length: u64,
        /// Its device path, as text ("" when the firmware logs none).
        device_path: String,
    },
    /// A platform firmware blob (base and length; the digest is of its content).
    FirmwareBlob {
        /// The description (BLOB2 only).
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// The blob's base address.
        base: u64,
        /// The blob's length.
        length: u64,
    },
    /// The GPT of the boot disk.
    Gpt {
        /// The disk GUID.
        disk_guid: String,
        /// Its partitions.
        partitions: Vec<Partition>,
    },
    /// EFI handoff tables (SMBIOS, ACPI, ...): how many.
    HandoffTables {
        /// The number of tables.
        count: u64,
    },
}

/// An EFI_SIGNATURE_LIST, summarized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureListSummary {
    /// `sha256`, `x509`, or the GUID.
    pub signature_type: String,
    /// Entries in the list.
    pub entries: usize,
}

/// A GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// PartitionTypeGUID.
    pub type_guid: String,
    /// UniquePartitionGUID.
    pub unique_guid: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA.
    pub last_lba: u64,
    /// The name.
    pub name: String,
}

fn signature_type_name(t: &[u8; 16]) -> String {
    if *t == EFI_CERT_SHA256 {
        "sha256".into()
    } else if *t == EFI_CERT_X509 {
        "x509".into()
    } else {
        guid_string(t)
    }
}

/// UTF-16LE to text, stopping at the first NUL.
fn utf16_text(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| match c {
            [a, b] => u16::from_le_bytes([*a, *b]),
            _ => 0,
        })
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// ASCII or UTF-8 text, stopping at the first NUL.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

fn u64le(r: &mut Le<'_>) -> Result<u64, EvidenceError> {
    Ok(u64::from_le_bytes(
        r.bytes(8)?.try_into().map_err(|_| bad("truncated"))?,
    ))
}

/// A UINTN of the log's platform (4 or 8 bytes, from the Spec ID event).
fn uintn(r: &mut Le<'_>, size: usize) -> Result<u64, EvidenceError> {
    if size == 4 {
        Ok(u64::from(r.u32()?))
    } else {
        u64le(r)
    }
}

fn guid(r: &mut Le<'_>) -> Result<[u8; 16], EvidenceError> {
    r.bytes(16)?.try_into().map_err(|_| bad("GUID"))
}

/// Renders an EFI device path (UEFI 2.10, section 10) as text, in the style of the UEFI shell;
/// node types writ does not name are shown as `Path(type,subtype,hex)`.
pub fn device_path_text(bytes: &[u8]) -> Result<String, EvidenceError> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if out.len() >= MAX_PATH_NODES {
            return Err(bad(format!(
                "device path longer than {MAX_PATH_NODES} nodes"
            )));
        }
        let mut r = Le { buf: rest, pos: 0 };
        let (kind, sub) = (r.u8()?, r.u8()?);
        let len = usize::from(r.u16()?);
        if len < 4 || len > rest.len() {
            return Err(bad(format!("device path node of length {len}")));
        }
        let body = rest.get(4..len).unwrap_or_default();
        rest = rest.get(len..).unwrap_or_default();
        let mut b = Le { buf: body, pos: 0 };
        let node = match (kind, sub) {
            (0x7f, 0xff) => break,
            (0x7f, 0x01) => "|".to_string(),
            (0x01, 0x01) if body.len() == 2 => {
                let (func, dev) = (b.u8()?, b.u8()?);
                format!("Pci({dev:#x},{func:#x})")
            }
            (0x02, 0x01) if body.len() == 8 => {
                let hid = b.u32()?;
                let uid = b.u32()?;
                if hid & 0xffff == 0x41d0 && matches!(hid >> 16, 0x0a03 | 0x0a08) {
                    format!("PciRoot({uid:#x})")
                } else {
                    format!("Acpi({hid:#x},{uid:#x})")
                }
            }
            (0x03, 0x01) if body.len() >= 2 => {
                let (primary, slave) = (b.u8()?, b.u8()?);
                format!("Ata({primary},{slave})")
            }
            (0x03, 0x02) if body.len() >= 4 => format!("Scsi({},{})", b.u16()?, b.u16()?),
            (0x03, 0x05) if body.len() >= 2 => {
                let (port, iface) = (b.u8()?, b.u8()?);
                format!("USB({port:#x},{iface:#x})")
            }
            (0x03, 0x12) if body.len() >= 6 => {
                format!("Sata({:#x},{:#x},{:#x})", b.u16()?, b.u16()?, b.u16()?)
            }
            (0x03, 0x17) if body.len() >= 12 => {
                let ns = b.u32()?;
                let eui = u64le(&mut b)?;
                format!("NVMe({ns:#x},{eui:016x})")
            }
            (0x03, 0x0b) if body.len() >= 32 => {
                let mac = b.bytes(6)?;
                format!(
                    "MAC({})",
                    mac.iter().map(|x| format!("{x:02x}")).collect::<String>()
                )
            }
            (0x03, 0x18) => format!("Uri({})", text(body)),
            (0x04, 0x01) if body.len() >= 38 => {
                let part = b.u32()?;
                let start = u64le(&mut b)?;
                let size = u64le(&mut b)?;
                let sig = guid(&mut b)?;
                let (_format, sig_type) = (b.u8()?, b.u8()?);
                match sig_type {
                    2 => format!("HD({part},GPT,{},{start:#x},{size:#x})", guid_string(&sig)),
                    1 => {
                        let [a, b, c, d, ..] = sig;
                        let mbr = u32::from_le_bytes([a, b, c, d]);
                        format!("HD({part},MBR,{mbr:#010x},{start:#x},{size:#x})")
                    }
                    _ => format!("HD({part},{sig_type},{start:#x},{size:#x})"),
                }
            }
            (0x04, 0x02) => "CDROM".to_string(),
            (0x04, 0x04) => utf16_text(body),
            (0x04, 0x06) if body.len() == 16 => format!("FvFile({})", guid_string(&guid(&mut b)?)),
            (0x04, 0x07) if body.len() == 16 => format!("Fv({})", guid_string(&guid(&mut b)?)),
            (0x04, 0x08) if body.len() >= 20 => {
                let _reserved = b.u32()?;
                let start = u64le(&mut b)?;
                let end = u64le(&mut b)?;
                format!("Offset({start:#x},{end:#x})")
            }
            (0x05, 0x01) => "BBS".to_string(),
            _ => format!(
                "Path({kind},{sub},{})",
                body.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        };
        out.push(node);
    }
    Ok(out.join("/"))
}

/// EFI_LOAD_OPTION (a Boot#### variable's data): its description and device path.
fn load_option(data: &[u8]) -> Result<(String, String), EvidenceError> {
    let mut r = Le { buf: data, pos: 0 };
    let _attributes = r.u32()?;
    let path_len = usize::from(r.u16()?);
    // The description is a NUL-terminated UTF-16 string.
    let mut units = Vec::new();
    loop {
        let u = r.u16()?;
        if u == 0 {
            break;
        }
        units.push(u);
    }
    let path = r.bytes(path_len)?;
    Ok((String::from_utf16_lossy(&units), device_path_text(path)?))
}

impl Event {
    /// The event type's name (`EV_...`), or its number in hex.
    pub fn type_name(&self) -> String {
        event_type_name(self.event_type)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:#010x}", self.event_type))
    }

    /// What the event data says, for the types writ reads; an error if the data of such a type
    /// is malformed. `uintn` is the platform's UINTN size in bytes ([`super::EventLog::uintn_size`]).
    pub fn detail(&self, uintn_size: usize) -> Result<Detail, EvidenceError> {
        let data = self.data.as_slice();
        let mut r = Le { buf: data, pos: 0 };
        let at =
            |e: EvidenceError| bad(format!("event {} ({}): {e}", self.number, self.type_name()));
        Ok(match self.event_type {
            super::EV_SEPARATOR => match <[u8; 4]>::try_from(data) {
                Ok(v) => Detail::Separator {
                    value: u32::from_le_bytes(v),
                },
                Err(_) => Detail::Text { text: text(data) },
            },
            EV_S_CRTM_VERSION => Detail::Text {
                text: utf16_text(data),
            },
            super::EV_EFI_ACTION | EV_IPL | 0x0000_0005 => Detail::Text { text: text(data) },
            EV_POST_CODE if data.len() == 16 && !data.iter().all(u8::is_ascii) => {
                Detail::FirmwareBlob {
                    description: None,
                    base: u64le(&mut r).map_err(at)?,
                    length: u64le(&mut r).map_err(at)?,
                }
            }
            EV_POST_CODE => Detail::Text { text: text(data) },
            super::EV_EFI_VARIABLE_DRIVER_CONFIG
            | EV_EFI_VARIABLE_BOOT
            | EV_EFI_VARIABLE_BOOT2
            | EV_EFI_VARIABLE_AUTHORITY => {
                let v = if self.event_type == EV_EFI_VARIABLE_AUTHORITY {
                    EfiVariable::parse_lenient(data)
                } else {
                    EfiVariable::parse(data)
                }
                .map_err(at)?;
                variable_detail(self.event_type, &v).map_err(at)?
            }
            EV_EFI_BOOT_SERVICES_APPLICATION
            | EV_EFI_BOOT_SERVICES_DRIVER
            | EV_EFI_RUNTIME_SERVICES_DRIVER => {
                let location = u64le(&mut r).map_err(at)?;
                let length = uintn(&mut r, uintn_size).map_err(at)?;
                let _link_time = uintn(&mut r, uintn_size).map_err(at)?;
                let path_len = uintn(&mut r, uintn_size).map_err(at)?;
                let path = r
                    .bytes(usize::try_from(path_len).map_err(|_| bad("device path length"))?)
                    .map_err(at)?;
                Detail::Image {
                    location,
                    length,
                    device_path: device_path_text(path).map_err(at)?,
                }
            }
            EV_EFI_PLATFORM_FIRMWARE_BLOB => Detail::FirmwareBlob {
                description: None,
                base: u64le(&mut r).map_err(at)?,
                length: u64le(&mut r).map_err(at)?,
            },
            EV_EFI_PLATFORM_FIRMWARE_BLOB2 => {
                let n = usize::from(r.u8().map_err(at)?);
                let description = text(r.bytes(n).map_err(at)?);
                Detail::FirmwareBlob {
                    description: Some(description),
                    base: u64le(&mut r).map_err(at)?,
                    length: u64le(&mut r).map_err(at)?,
                }
            }
            EV_EFI_GPT_EVENT => gpt(&mut r).map_err(at)?,
            EV_EFI_HANDOFF_TABLES => Detail::HandoffTables {
                count: uintn(&mut r, uintn_size).map_err(at)?,
            },
            _ => Detail::None,
        })
    }
}

fn variable_detail(event_type: u32, v: &EfiVariable) -> Result<Detail, EvidenceError> {
    let mut enabled = None;
    let mut signature_lists = Vec::new();
    let mut description = None;
    let mut device_path = None;
    let database = matches!(v.name.as_str(), "PK" | "KEK" | "db" | "dbx" | "dbt" | "dbr");
    if event_type == super::EV_EFI_VARIABLE_DRIVER_CONFIG && v.name == "SecureBoot" {
        enabled = Some(v.data.first().copied().unwrap_or(0) == 1);
    } else if event_type == super::EV_EFI_VARIABLE_DRIVER_CONFIG && database {
        signature_lists = SignatureList::parse_all(&v.data)?
            .iter()
            .map(|l| SignatureListSummary {
                signature_type: signature_type_name(&l.signature_type),
                entries: l.signatures.len(),
            })
            .collect();
    } else if event_type != EV_EFI_VARIABLE_AUTHORITY
        && v.name.len() == 8
        && v.name.starts_with("Boot")
        && v.name
            .get(4..)
            .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
    {
        // A Boot#### option; firmware that logs only part of it is described as far as it goes.
        if let Ok((d, p)) = load_option(&v.data) {
            description = Some(d);
            device_path = Some(p);
        }
    }
    Ok(Detail::Variable {
        guid: guid_string(&v.guid),
        name: v.name.clone(),
        data_len: v.data.len(),
        enabled,
        signature_lists,
        description,
        device_path,
    })
}

/// UEFI_GPT_DATA: the partition table header, then NumberOfPartitions entries of the header's
/// SizeOfPartitionEntry.
fn gpt(r: &mut Le<'_>) -> Result<Detail, EvidenceError> {
    let signature = r.bytes(8)?;
    if signature != b"EFI PART" {
        return Err(bad("GPT header signature is not \"EFI PART\""));
    }
    let _revision = r.u32()?;
    let _header_size = r.u32()?;
    let _crc = r.u32()?;
    let _reserved = r.u32()?;
    for _ in 0..4 {
        u64le(r)?; // MyLBA, AlternateLBA, FirstUsableLBA, LastUsableLBA
    }
    let disk_guid = guid(r)?;
    let _entry_lba = u64le(r)?;
    let _entries = r.u32()?;
    let entry_size = r.u32()? as usize;
    let _array_crc = r.u32()?;
    let count = u64le(r)?;
    if count > MAX_PARTITIONS {
        return Err(bad(format!("GPT with {count} partitions")));
    }
    if entry_size < 128 {
        return Err(bad(format!("GPT partition entry size {entry_size}")));
    }
    let mut partitions = Vec::new();
    for _ in 0..count {
        let entry = r.bytes(entry_size)?;
        let mut e = Le { buf: entry, pos: 0 };
        let type_guid = guid(&mut e)?;
        let unique = guid(&mut e)?;
        let first_lba = u64le(&mut e)?;
        let last_lba = u64le(&mut e)?;
        let _attributes = u64le(&mut e)?;
        let name = utf16_text(e.bytes(72)?);
        partitions.push(Partition {
            type_guid: guid_string(&type_guid),
            unique_guid: guid_string(&unique),
            first_lba,
            last_lba,
            name,
        });
    }
    if !r.done() {
        return Err(bad("trailing bytes after the GPT partitions"));
    }
    Ok(Detail::Gpt {
        disk_guid: guid_string(&disk_guid),
        partitions,
    })
}

//! Facts read from a log for policy, by content and position, never by event type (types are
//! not measured, and root can extend PCRs after boot): separators recognized by their data, PCR
//! 7's configuration read only before its separator, variables by vendor GUID and name, every
//! such event hashing to every digest writ can compute.

use super::typed::{EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE};
use super::{EV_NO_ACTION, EfiVariable, Event, EventLog};

/// Why a fact is not established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactError {
    /// A stable code: `pcr7_separator`, `event_data`, `secure_boot`, `dbx`.
    pub code: &'static str,
    /// The event concerned, if one is.
    pub event: Option<usize>,
    /// For people.
    pub message: String,
}

/// A fact and the event it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact<T> {
    /// The value.
    pub value: T,
    /// The event's number.
    pub event: usize,
}

/// PCR 7's pre-OS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcr7Config {
    /// Secure Boot on or off (an absent variable, measured with no data, is off).
    pub secure_boot: Result<Fact<bool>, FactError>,
    /// Entries in the dbx (forbidden signatures).
    pub dbx_entries: Result<Fact<usize>, FactError>,
}

fn fail(code: &'static str, event: Option<usize>, message: String) -> FactError {
    FactError {
        code,
        event,
        message,
    }
}

impl Event {
    /// A separator, recognized by its content whatever its type says: four bytes (0, or 1 / all
    /// ones for an error separator) that hash to the event's digests.
    pub fn is_separator(&self) -> bool {
        self.event_type != EV_NO_ACTION
            && matches!(
                <[u8; 4]>::try_from(self.data.as_slice()).map(u32::from_le_bytes),
                Ok(0 | 1 | 0xFFFF_FFFF)
            )
            && self.data_matches_digests()
    }

    /// The UEFI_VARIABLE_DATA of this vendor GUID and name, whatever the event type says.
    pub fn variable_named(&self, guid: &[u8; 16], name: &str) -> Option<EfiVariable> {
        EfiVariable::parse(&self.data)
            .ok()
            .filter(|v| &v.guid == guid && v.name == name)
    }
}

/// The one variable of `guid` and `name` among `pre`, exactly once.
fn once<'a>(
    pre: &[&'a Event],
    guid: &[u8; 16],
    name: &str,
    code: &'static str,
) -> Result<(&'a Event, EfiVariable), FactError> {
    let found: Vec<(&Event, EfiVariable)> = pre
        .iter()
        .filter_map(|e| e.variable_named(guid, name).map(|v| (*e, v)))
        .collect();
    match found.as_slice() {
        [] => Err(fail(
            code,
            None,
            format!("the log measures no {name} into PCR 7 before its separator"),
        )),
        [(e, v)] => Ok((*e, v.clone())),
        [_, (e, _), ..] => Err(fail(
            code,
            Some(e.number),
            format!(
                "{name} is measured {} times (again at event {})",
                found.len(),
                e.number
            ),
        )),
    }
}

impl EventLog {
    /// The events of `pcr` up to its first separator (the pre-OS measurements), or `None` if the
    /// PCR has no separator: then what firmware measured cannot be told from what came later.
    pub fn pre_os(&self, pcr: u32) -> Option<Vec<&Event>> {
        let mut out = Vec::new();
        for e in self
            .events
            .iter()
            .filter(|e| e.pcr == pcr && e.event_type != EV_NO_ACTION)
        {
            if e.is_separator() {
                return Some(out);
            }
            out.push(e);
        }
        None
    }

    /// PCR 7's Secure Boot state and dbx size, from its pre-OS events only, each of which must
    /// hash to its digests; SecureBoot and dbx measured exactly once each.
    pub fn pcr7_config(&self) -> Pcr7Config {
        let Some(pre) = self.pre_os(7) else {
            let why = fail(
                "pcr7_separator",
                None,
                "PCR 7 has no separator: its pre-OS configuration cannot be told from later \
                 measurements"
                    .to_string(),
            );
            return Pcr7Config {
                secure_boot: Err(why.clone()),
                dbx_entries: Err(why),
            };
        };
        if let Some(bad) = pre.iter().find(|e| !e.data_matches_digests()) {
            let why = fail(
                "event_data",
                Some(bad.number),
                format!(
                    "event {} ({}) on PCR 7 before the separator: its data does not hash to its \
                     logged digests, so PCR 7's configuration is unknown",
                    bad.number,
                    bad.type_name()
                ),
            );
            return Pcr7Config {
                secure_boot: Err(why.clone()),
                dbx_entries: Err(why),
            };
        }
        let secure_boot = once(&pre, &EFI_GLOBAL_VARIABLE, "SecureBoot", "secure_boot").and_then(
            |(e, v)| match v.data.as_slice() {
                // An absent variable is measured with no data (PC Client PFP 3.3.4.2): off.
                [] => Ok(Fact {
                    value: false,
                    event: e.number,
                }),
                [b] => Ok(Fact {
                    value: *b == 1,
                    event: e.number,
                }),
                _ => Err(fail(
                    "event_data",
                    Some(e.number),
                    format!(
                        "event {}: SecureBoot holds {} bytes, not 1",
                        e.number,
                        v.data.len()
                    ),
                )),
            },
        );
        let dbx_entries =
            once(&pre, &EFI_IMAGE_SECURITY_DATABASE, "dbx", "dbx").and_then(|(e, v)| {
                v.signature_lists()
                    .map(|ls| Fact {
                        value: ls.iter().map(|l| l.signatures.len()).sum(),
                        event: e.number,
                    })
                    .map_err(|err| {
                        fail(
                            "event_data",
                            Some(e.number),
                            format!("event {} (dbx): {err}", e.number),
                        )
                    })
            });
        Pcr7Config {
            secure_boot,
            dbx_entries,
        }
    }
}

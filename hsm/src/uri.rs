//! Key names: RFC 7512 `pkcs11:` URIs, writ's `tpm:` form and the test-only `soft:` form.
//!
//! ```text
//! pkcs11:token=writ;object=issuer?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/writ/pin
//! pkcs11:token=writ;object=issuer;id=%01%02?pin-source=env:WRIT_PKCS11_PIN
//! tpm:handle=0x81000101?tcti=swtpm:host=127.0.0.1,port=2321&auth-source=file:/etc/writ/tpm-auth
//! soft:path=/tmp/test-key.pk8
//! ```
//!
//! * `pkcs11:` path attributes `token` (label) and `object` (label) are required, `id` is optional
//!   (percent-encoded bytes). `module-path` falls back to `WRIT_PKCS11_MODULE`. The PIN comes from
//!   `pin-source` (`file:PATH`, `file:///PATH`, an absolute path, or writ's `env:VAR`) or, if none is
//!   given, from `WRIT_PKCS11_PIN`. `pin-value` is refused: a PIN never sits in clear in a URI or a
//!   config file.
//! * `tpm:` names a persistent key by `handle` (0x81000000-0x81FFFFFF). `tcti` is the TCTI
//!   configuration string (everything after `tcti=` up to the next `&`); without it `TPM2TOOLS_TCTI`,
//!   then `TCTI`, then `device:/dev/tpmrm0`. `auth-source` (same forms as `pin-source`) supplies the
//!   key's authValue; without it the key has an empty authValue.
//! * `soft:` is for tests only and names a PKCS#8 file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::CustodyError;

/// Environment variable that names the PKCS#11 module when the URI does not.
pub const ENV_PKCS11_MODULE: &str = "WRIT_PKCS11_MODULE";
/// Environment variable that holds the token PIN when the URI names no `pin-source`.
pub const ENV_PKCS11_PIN: &str = "WRIT_PKCS11_PIN";
/// The TPM resource manager device, the TCTI used when none is configured.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// Largest secret a source may hold; anything larger is refused rather than read.
const MAX_SECRET_LEN: u64 = 1024;

/// A key name of any backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUri {
    /// A key on a PKCS#11 token.
    Pkcs11(Pkcs11Uri),
    /// A persistent key in a TPM.
    Tpm(TpmUri),
    /// A software key file (tests only).
    Software(SoftUri),
}

impl FromStr for KeyUri {
    type Err = CustodyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("pkcs11:") {
            Pkcs11Uri::parse(rest).map(KeyUri::Pkcs11)
        } else if let Some(rest) = s.strip_prefix("tpm:") {
            TpmUri::parse(rest).map(KeyUri::Tpm)
        } else if let Some(rest) = s.strip_prefix("soft:") {
            SoftUri::parse(rest).map(KeyUri::Software)
        } else {
            Err(CustodyError::InvalidUri(
                "expected a pkcs11:, tpm: or soft: key URI".to_string(),
            ))
        }
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyUri::Pkcs11(u) => u.fmt(f),
            KeyUri::Tpm(u) => u.fmt(f),
            KeyUri::Software(u) => u.fmt(f),
        }
    }
}

/// Where a PIN or authValue is read from. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file whose content (one trailing newline stripped) is the secret.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl SecretSource {
    fn parse(value: &str) -> Result<Self, CustodyError> {
        if let Some(var) = value.strip_prefix("env:") {
            if var.is_empty() {
                return Err(CustodyError::InvalidUri(
                    "env: secret source names no variable".into(),
                ));
            }
            return Ok(SecretSource::Env(var.to_string()));
        }
        let path = value
            .strip_prefix("file://")
            .or_else(|| value.strip_prefix("file:"))
            .unwrap_or(value);
        if !path.starts_with('/') {
            // The value is not echoed: it may be a secret typed in the wrong place.
            return Err(CustodyError::InvalidUri(
                "a secret source must be file:/ABSOLUTE/PATH or env:VAR".into(),
            ));
        }
        Ok(SecretSource::File(PathBuf::from(path)))
    }

    /// Reads the secret. The value is zeroized when dropped and never appears in an error.
    pub fn read(&self) -> Result<Zeroizing<String>, CustodyError> {
        match self {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) => Ok(Zeroizing::new(v)),
                Err(_) => Err(CustodyError::SecretSource {
                    source_name: self.to_string(),
                    reason: "variable not set or not UTF-8".into(),
                }),
            },
            SecretSource::File(path) => {
                use std::io::Read;
                use std::os::unix::fs::PermissionsExt;
                let err = |reason: String| CustodyError::SecretSource {
                    source_name: self.to_string(),
                    reason,
                };
                let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
                let mode = file
                    .metadata()
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o007 != 0 {
                    return Err(err(format!(
                        "mode {:o} lets other users read or change it; chmod o-rwx",
                        mode & 0o777
                    )));
                }
                // Room for the whole bound up front, so the secret is never copied by a regrowth
                // into memory that is freed without being zeroized.
                let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN as usize + 1));
                file.take(MAX_SECRET_LEN + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| err(e.to_string()))?;
                if buf.len() as u64 > MAX_SECRET_LEN {
                    return Err(err(format!("longer than {MAX_SECRET_LEN} bytes")));
                }
                let text = std::str::from_utf8(&buf).map_err(|_| err("not UTF-8".into()))?;
                let text = text.strip_suffix('\n').unwrap_or(text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                Ok(Zeroizing::new(text.to_string()))
            }
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file:{}", p.display()),
            SecretSource::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// An RFC 7512 PKCS#11 URI, restricted to what writ needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// Token label (`token=`).
    pub token: String,
    /// Object label (`object=`).
    pub object: String,
    /// Object id (`id=`), if given.
    pub id: Option<Vec<u8>>,
    /// Module path (`module-path=`), if given.
    pub module_path: Option<PathBuf>,
    /// PIN source (`pin-source=`), if given.
    pub pin_source: Option<SecretSource>,
}

impl Pkcs11Uri {
    fn parse(rest: &str) -> Result<Self, CustodyError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = None;
        let mut object = None;
        let mut id = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| {
                CustodyError::InvalidUri(
                    "pkcs11: a path attribute has no value (expected name=value)".into(),
                )
            })?;
            let value = percent_decode(v)?;
            let slot = match k {
                "token" => &mut token,
                "object" => &mut object,
                "id" => &mut id,
                // Attributes that narrow the match further are legal RFC 7512 but would be silently
                // ignored here; refuse them so nobody believes they are enforced.
                other => {
                    return Err(CustodyError::InvalidUri(format!(
                        "pkcs11: attribute {other:?} is not supported (use token, object, id)"
                    )));
                }
            };
            if slot.replace(value).is_some() {
                return Err(CustodyError::InvalidUri(format!(
                    "pkcs11: attribute {k:?} repeated"
                )));
            }
        }
        let mut module_path = None;
        let mut pin_source = None;
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| {
                CustodyError::InvalidUri(
                    "pkcs11: a query attribute has no value (expected name=value)".into(),
                )
            })?;
            match k {
                "module-path" => {
                    let path = PathBuf::from(utf8(percent_decode(v)?)?);
                    if module_path.replace(path).is_some() {
                        return Err(repeated("pkcs11", k));
                    }
                }
                "pin-source" => {
                    let source = SecretSource::parse(&utf8(percent_decode(v)?)?)?;
                    if pin_source.replace(source).is_some() {
                        return Err(repeated("pkcs11", k));
                    }
                }
                "pin-value" => {
                    return Err(CustodyError::InvalidUri(
                        "pkcs11: pin-value is refused: give the PIN through pin-source=file:... or \
                         pin-source=env:VAR"
                            .into(),
                    ));
                }
                other => {
                    return Err(CustodyError::InvalidUri(format!(
                        "pkcs11: query attribute {other:?} is not supported"
                    )));
                }
            }
        }
        let token = utf8(
            token.ok_or_else(|| CustodyError::InvalidUri("pkcs11: token= is required".into()))?,
        )?;
        let object = utf8(
            object.ok_or_else(|| CustodyError::InvalidUri("pkcs11: object= is required".into()))?,
        )?;
        if token.is_empty() || object.is_empty() {
            return Err(CustodyError::InvalidUri(
                "pkcs11: token and object must not be empty".into(),
            ));
        }
        Ok(Pkcs11Uri {
            token,
            object,
            id,
            module_path,
            pin_source,
        })
    }

    /// The module to load: `module-path`, else `WRIT_PKCS11_MODULE`.
    pub fn module(&self) -> Result<PathBuf, CustodyError> {
        if let Some(p) = &self.module_path {
            return Ok(p.clone());
        }
        match std::env::var_os(ENV_PKCS11_MODULE) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(CustodyError::ModuleNotConfigured),
        }
    }

    /// Where the PIN comes from: `pin-source`, else `WRIT_PKCS11_PIN`.
    pub fn pin_source(&self) -> SecretSource {
        self.pin_source
            .clone()
            .unwrap_or_else(|| SecretSource::Env(ENV_PKCS11_PIN.to_string()))
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pkcs11:token={};object={}",
            percent_encode(self.token.as_bytes()),
            percent_encode(self.object.as_bytes())
        )?;
        if let Some(id) = &self.id {
            write!(f, ";id=")?;
            for b in id {
                write!(f, "%{b:02x}")?;
            }
        }
        let mut sep = '?';
        if let Some(m) = &self.module_path {
            write!(
                f,
                "{sep}module-path={}",
                percent_encode(m.to_string_lossy().as_bytes())
            )?;
            sep = '&';
        }
        if let Some(p) = &self.pin_source {
            write!(
                f,
                "{sep}pin-source={}",
                percent_encode(p.to_string().as_bytes())
            )?;
        }
        Ok(())
    }
}

/// The first persistent handle of the owner range; the last is 0x81FF_FFFF.
pub const PERSISTENT_FIRST: u32 = 0x8100_0000;
const PERSISTENT_LAST: u32 = 0x81FF_FFFF;

/// writ's name for a persistent TPM key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmUri {
    /// The persistent handle.
    pub handle: u32,
    /// TCTI configuration, if given in the URI.
    pub tcti: Option<String>,
    /// Source of the key's authValue, if any.
    pub auth_source: Option<SecretSource>,
}

impl TpmUri {
    fn parse(rest: &str) -> Result<Self, CustodyError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut handle = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            match attr.split_once('=') {
                Some(("handle", v)) => {
                    let digits = v
                        .strip_prefix("0x")
                        .or_else(|| v.strip_prefix("0X"))
                        .ok_or_else(|| {
                            CustodyError::InvalidUri(
                                "tpm: handle must be hex, e.g. 0x81000101".into(),
                            )
                        })?;
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(CustodyError::InvalidUri(format!(
                            "tpm: handle {v:?} is not a hex number"
                        )));
                    }
                    let h = u32::from_str_radix(digits, 16).map_err(|_| {
                        CustodyError::InvalidUri(format!("tpm: handle {v:?} is not a hex number"))
                    })?;
                    if !(PERSISTENT_FIRST..=PERSISTENT_LAST).contains(&h) {
                        return Err(CustodyError::InvalidUri(format!(
                            "tpm: handle {h:#010x} is not a persistent owner handle \
                             (0x81000000-0x81ffffff)"
                        )));
                    }
                    if handle.replace(h).is_some() {
                        return Err(CustodyError::InvalidUri("tpm: handle repeated".into()));
                    }
                }
                _ => {
                    // Only the name, and only if there is one: a bare value may be a secret.
                    let key = attr.split_once('=').map_or("(no name)", |(k, _)| k);
                    return Err(CustodyError::InvalidUri(format!(
                        "tpm: attribute {key:?} is not supported (use handle=0x81......)"
                    )));
                }
            }
        }
        let mut tcti = None;
        let mut auth_source = None;
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            match attr.split_once('=') {
                Some(("tcti", v)) => {
                    if tcti.replace(utf8(percent_decode(v)?)?).is_some() {
                        return Err(repeated("tpm", "tcti"));
                    }
                }
                Some(("auth-source", v)) => {
                    let source = SecretSource::parse(&utf8(percent_decode(v)?)?)?;
                    if auth_source.replace(source).is_some() {
                        return Err(repeated("tpm", "auth-source"));
                    }
                }
                Some(("auth-value", _)) => {
                    return Err(CustodyError::InvalidUri(
                        "tpm: auth-value is refused: use auth-source=file:... or env:VAR".into(),
                    ));
                }
                _ => {
                    // Only the name, and only if there is one: a bare value may be a secret.
                    let key = attr.split_once('=').map_or("(no name)", |(k, _)| k);
                    return Err(CustodyError::InvalidUri(format!(
                        "tpm: query attribute {key:?} is not supported (use tcti, auth-source)"
                    )));
                }
            }
        }
        let handle =
            handle.ok_or_else(|| CustodyError::InvalidUri("tpm: handle= is required".into()))?;
        Ok(TpmUri {
            handle,
            tcti,
            auth_source,
        })
    }

    /// The TCTI to open: from the URI, else `TPM2TOOLS_TCTI`, `TCTI`, else the kernel's resource
    /// manager.
    pub fn tcti(&self) -> String {
        resolve_tcti(self.tcti.as_deref())
    }
}

/// The TCTI configuration in force: `explicit`, else `TPM2TOOLS_TCTI`, `TCTI`, the default device.
pub fn resolve_tcti(explicit: Option<&str>) -> String {
    if let Some(t) = explicit {
        return t.to_string();
    }
    for var in ["TPM2TOOLS_TCTI", "TCTI"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return v;
        }
    }
    DEFAULT_TCTI.to_string()
}

impl fmt::Display for TpmUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tpm:handle={:#010x}", self.handle)?;
        let mut sep = '?';
        if let Some(t) = &self.tcti {
            write!(f, "{sep}tcti={}", escape_query(t))?;
            sep = '&';
        }
        if let Some(a) = &self.auth_source {
            write!(f, "{sep}auth-source={}", escape_query(&a.to_string()))?;
        }
        Ok(())
    }
}

/// A test-only software key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftUri {
    /// The PKCS#8 file.
    pub path: PathBuf,
}

impl SoftUri {
    fn parse(rest: &str) -> Result<Self, CustodyError> {
        match rest.split_once('=') {
            Some(("path", p)) if p.starts_with('/') => Ok(SoftUri {
                path: PathBuf::from(utf8(percent_decode(p)?)?),
            }),
            _ => Err(CustodyError::InvalidUri(
                "soft: expected soft:path=/ABSOLUTE/PATH".into(),
            )),
        }
    }
}

impl fmt::Display for SoftUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "soft:path={}", self.path.display())
    }
}

fn repeated(scheme: &str, key: &str) -> CustodyError {
    CustodyError::InvalidUri(format!("{scheme}: attribute {key:?} repeated"))
}

/// Escapes what would change how a query value parses (`%`, `&`), leaving TCTI strings readable.
fn escape_query(value: &str) -> String {
    value.replace('%', "%25").replace('&', "%26")
}

fn utf8(bytes: Vec<u8>) -> Result<String, CustodyError> {
    String::from_utf8(bytes).map_err(|_| CustodyError::InvalidUri("value is not UTF-8".into()))
}

fn percent_decode(s: &str) -> Result<Vec<u8>, CustodyError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(hex_val);
            let lo = bytes.next().and_then(hex_val);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => {
                    return Err(CustodyError::InvalidUri(format!(
                        "bad percent-encoding in {s:?}"
                    )));
                }
            }
        } else {
            out.push(b);
        }
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkcs11(s: &str) -> Pkcs11Uri {
        match s.parse::<KeyUri>().unwrap() {
            KeyUri::Pkcs11(u) => u,
            other => panic!("not pkcs11: {other:?}"),
        }
    }

    #[test]
    fn pkcs11_uri_with_everything() {
        let u = pkcs11(
            "pkcs11:token=writ%20dev;object=issuer;id=%01%ff?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        );
        assert_eq!(u.token, "writ dev");
        assert_eq!(u.object, "issuer");
        assert_eq!(u.id, Some(vec![1, 0xff]));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin_source, Some(SecretSource::File("/run/pin".into())));
        // Display round-trips.
        assert_eq!(pkcs11(&u.to_string()), u);
    }

    #[test]
    fn pkcs11_pin_sources() {
        assert_eq!(
            pkcs11("pkcs11:token=t;object=o?pin-source=file:///a/b").pin_source,
            Some(SecretSource::File("/a/b".into()))
        );
        assert_eq!(
            pkcs11("pkcs11:token=t;object=o?pin-source=env:X").pin_source(),
            SecretSource::Env("X".into())
        );
        assert_eq!(
            pkcs11("pkcs11:token=t;object=o").pin_source(),
            SecretSource::Env(ENV_PKCS11_PIN.into())
        );
        assert!(
            "pkcs11:token=t;object=o?pin-source=relative"
                .parse::<KeyUri>()
                .is_err()
        );
    }

    #[test]
    fn pkcs11_pin_value_is_refused() {
        let e = "pkcs11:token=t;object=o?pin-value=1234"
            .parse::<KeyUri>()
            .unwrap_err();
        assert!(e.to_string().contains("pin-value is refused"), "{e}");
        assert!(!e.to_string().contains("1234"));
    }

    #[test]
    fn pkcs11_requires_token_and_object_and_refuses_unknown() {
        assert!("pkcs11:object=o".parse::<KeyUri>().is_err());
        assert!("pkcs11:token=t".parse::<KeyUri>().is_err());
        assert!(
            "pkcs11:token=t;object=o;serial=1"
                .parse::<KeyUri>()
                .is_err()
        );
        assert!("pkcs11:token=t;token=u;object=o".parse::<KeyUri>().is_err());
        assert!("pkcs11:token=t;object=o;id=%zz".parse::<KeyUri>().is_err());
    }

    #[test]
    fn tpm_uri_forms() {
        let u = match "tpm:handle=0x81000101?tcti=swtpm:host=127.0.0.1,port=2321&auth-source=env:A"
            .parse::<KeyUri>()
            .unwrap()
        {
            KeyUri::Tpm(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(u.handle, 0x8100_0101);
        assert_eq!(u.tcti.as_deref(), Some("swtpm:host=127.0.0.1,port=2321"));
        assert_eq!(u.auth_source, Some(SecretSource::Env("A".into())));
        assert_eq!(
            u.to_string(),
            "tpm:handle=0x81000101?tcti=swtpm:host=127.0.0.1,port=2321&auth-source=env:A"
        );
    }

    #[test]
    fn tpm_uri_refuses_non_persistent_handles_and_inline_auth() {
        assert!("tpm:handle=0x80000001".parse::<KeyUri>().is_err());
        assert!("tpm:handle=81000001".parse::<KeyUri>().is_err());
        assert!("tpm:".parse::<KeyUri>().is_err());
        assert!(
            "tpm:handle=0x81000001?auth-value=x"
                .parse::<KeyUri>()
                .is_err()
        );
    }

    fn set_mode(p: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234").unwrap();
        for mode in [0o604, 0o602, 0o644] {
            set_mode(&p, mode);
            let e = SecretSource::File(p.clone()).read().unwrap_err();
            assert!(e.to_string().contains("other users"), "{mode:o}: {e}");
        }
        set_mode(&p, 0o640);
        assert!(
            SecretSource::File(p).read().is_ok(),
            "group-readable is a deployment choice"
        );
    }

    #[test]
    fn repeated_query_attributes_are_refused() {
        assert!(
            "pkcs11:token=t;object=o?pin-source=env:A&pin-source=env:B"
                .parse::<KeyUri>()
                .is_err()
        );
        assert!(
            "pkcs11:token=t;object=o?module-path=/a&module-path=/b"
                .parse::<KeyUri>()
                .is_err()
        );
        assert!(
            "tpm:handle=0x81000001?tcti=a&tcti=b"
                .parse::<KeyUri>()
                .is_err()
        );
        assert!(
            "tpm:handle=0x81000001?auth-source=env:A&auth-source=env:B"
                .parse::<KeyUri>()
                .is_err()
        );
    }

    #[test]
    fn errors_do_not_echo_values() {
        for uri in [
            "tpm:handle=0x81000001?authvalue=hunter2",
            "tpm:authvalue=hunter2",
            "pkcs11:token=t;object=o?pin-source=hunter2",
            "pkcs11:token=t;object=o?hunter2",
            "pkcs11:token=t;hunter2",
            "tpm:handle=0x81000001?hunter2",
            "tpm:hunter2",
        ] {
            let e = uri.parse::<KeyUri>().unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{uri}: {e}");
        }
    }

    #[test]
    fn handles_must_be_plain_hex() {
        assert!("tpm:handle=0x+81000001".parse::<KeyUri>().is_err());
        assert!("tpm:handle=0x".parse::<KeyUri>().is_err());
    }

    #[test]
    fn tpm_display_round_trips_values_with_separators() {
        let u = match "tpm:handle=0x81000001?tcti=a%26auth-source=env:X"
            .parse::<KeyUri>()
            .unwrap()
        {
            KeyUri::Tpm(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(u.tcti.as_deref(), Some("a&auth-source=env:X"));
        assert_eq!(u.auth_source, None);
        let again = match u.to_string().parse::<KeyUri>().unwrap() {
            KeyUri::Tpm(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(again, u);
    }

    #[test]
    fn unknown_scheme_is_refused() {
        assert!("file:/x".parse::<KeyUri>().is_err());
        assert!("soft:path=relative".parse::<KeyUri>().is_err());
    }

    #[test]
    fn secret_file_strips_one_newline_and_refuses_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        set_mode(&p, 0o600);
        assert_eq!(
            SecretSource::File(p.clone()).read().unwrap().as_str(),
            "1234"
        );
        std::fs::write(&p, vec![b'1'; 2000]).unwrap();
        assert!(SecretSource::File(p).read().is_err());
        let missing = SecretSource::File(dir.path().join("none"))
            .read()
            .unwrap_err();
        assert!(matches!(missing, CustodyError::SecretSource { .. }));
    }
}

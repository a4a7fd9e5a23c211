//! C2SP tlog-tiles paths and entry bundles (tile height 8: 256 hashes or entries per full tile).
//!
//! `tile/<L>/<N>[.p/<W>]` holds hashes of tree level `8 * L`; `tile/entries/<N>[.p/<W>]` holds
//! entries, each as a big-endian 16-bit length and the bytes. `<N>` is written in groups of three
//! digits, all but the last prefixed with `x` (`1234067` is `x001/x234/067`).

use crate::error::EvidenceError;

/// Hashes or entries in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels per tile level.
pub const TILE_HEIGHT: u32 = 8;

fn bad(why: impl Into<String>) -> EvidenceError {
    EvidenceError::LogProof(format!("tile path: {}", why.into()))
}

/// What a tile path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// Tile level (`None`: the entry bundle).
    pub level: Option<u8>,
    /// Tile index.
    pub index: u64,
    /// Width (1-256; 256 for a full tile).
    pub width: u64,
}

/// Encodes a tile index as path elements.
pub fn encode_index(mut n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        groups.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

impl Tile {
    /// The path below the log's prefix.
    pub fn path(&self) -> String {
        let level = match self.level {
            Some(l) => l.to_string(),
            None => "entries".to_string(),
        };
        let mut p = format!("tile/{level}/{}", encode_index(self.index));
        if self.width < TILE_WIDTH {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path (`tile/...`), refusing every non-canonical spelling.
    pub fn parse(path: &str) -> Result<Tile, EvidenceError> {
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad("not under tile/"))?;
        let (level_text, rest) = rest.split_once('/').ok_or_else(|| bad("no index"))?;
        let level = if level_text == "entries" {
            None
        } else {
            let l: u8 = level_text
                .parse()
                .ok()
                .filter(|_| level_text == "0" || !level_text.starts_with('0'))
                .filter(|l| *l <= 63)
                .ok_or_else(|| bad(format!("level {level_text:?}")))?;
            Some(l)
        };
        let (index_text, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                let width: u64 = w
                    .parse()
                    .ok()
                    .filter(|_| !w.starts_with('0'))
                    .filter(|w| (1..TILE_WIDTH).contains(w))
                    .ok_or_else(|| bad(format!("partial width {w:?}")))?;
                (i, width)
            }
            None => (rest, TILE_WIDTH),
        };
        let groups: Vec<&str> = index_text.split('/').collect();
        let mut index: u64 = 0;
        let last = groups.len().saturating_sub(1);
        for (i, g) in groups.iter().enumerate() {
            let digits = if i < last {
                g.strip_prefix('x')
                    .ok_or_else(|| bad(format!("element {g:?}")))?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("element {g:?}")));
            }
            let v: u64 = digits.parse().map_err(|_| bad("index"))?;
            index = index
                .checked_mul(1000)
                .and_then(|x| x.checked_add(v))
                .ok_or_else(|| bad("index overflows"))?;
        }
        let tile = Tile {
            level,
            index,
            width,
        };
        if tile.path() != path {
            return Err(bad(format!("{path:?} is not canonical")));
        }
        Ok(tile)
    }
}

/// Encodes entries as an entry bundle.
pub fn entry_bundle(entries: &[Vec<u8>]) -> Result<Vec<u8>, EvidenceError> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| bad("entry longer than 65535 bytes"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Splits an entry bundle into its entries.
pub fn parse_entry_bundle(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, EvidenceError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_at_checked(2)
            .ok_or_else(|| bad("truncated entry length"))?;
        let n = usize::from(u16::from_be_bytes([
            len.first().copied().unwrap_or(0),
            len.get(1).copied().unwrap_or(0),
        ]));
        let (entry, rest) = rest
            .split_at_checked(n)
            .ok_or_else(|| bad("truncated entry"))?;
        out.push(entry.to_vec());
        bytes = rest;
        if out.len() as u64 > TILE_WIDTH {
            return Err(bad("more than 256 entries in a bundle"));
        }
    }
    Ok(out)
}

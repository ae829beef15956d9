//! Small state files, replaced atomically: write `NAME.tmp`, fsync it, rename
//! over `NAME`, fsync the directory. The payload is framed with a magic, a
//! length and a CRC32C, so a damaged file is detected, never half-read.
//!
//! Layout (little-endian): `b"TWCK"`, version `u8` = 1, payload length `u32`,
//! payload, CRC32C `u32` over everything before it.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{CheckpointError, StorageContext};
use super::storage::Storage;

const MAGIC: &[u8; 4] = b"TWCK";
const VERSION: u8 = 1;
const FRAME_LEN: usize = 4 + 1 + 4 + 4;
/// Checkpoints are small; a larger length field means damage.
const MAX_PAYLOAD: usize = 1 << 20;

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn unframe(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < FRAME_LEN {
        return Err(format!("{} bytes is shorter than the frame", bytes.len()));
    }
    if &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err("bad magic or version".into());
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[5..9]);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PAYLOAD || bytes.len() != FRAME_LEN + len {
        return Err(format!(
            "length {len} does not match the file size {}",
            bytes.len()
        ));
    }
    let (body, crc) = bytes.split_at(9 + len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(&body[9..])
}

/// Atomically replaces `dir/name` with `payload`.
pub fn write_bytes(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    payload: &[u8],
) -> Result<(), CheckpointError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = storage.open(&tmp, true).context(&tmp)?;
    let bytes = frame(payload);
    file.set_len(0).context(&tmp)?;
    file.write_all_at(&bytes, 0).context(&tmp)?;
    file.sync_data().context(&tmp)?;
    drop(file);
    storage.rename(&tmp, &path).context(&path)?;
    storage.sync_dir(dir).context(dir)?;
    Ok(())
}

/// Reads `path`; `Ok(None)` when it does not exist.
pub fn read_bytes(storage: &dyn Storage, path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    if !storage.exists(path) {
        return Ok(None);
    }
    let file = storage.open(path, false).context(path)?;
    let len = file.len().context(path)? as usize;
    if len > MAX_PAYLOAD + FRAME_LEN {
        return Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            what: format!("{len} bytes is too large"),
        });
    }
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0).context(path)?;
    let payload = unframe(&bytes).map_err(|what| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        what,
    })?;
    Ok(Some(payload.to_vec()))
}

pub fn write<T: Serialize>(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), CheckpointError> {
    let payload = serde_json::to_vec(value).map_err(|e| CheckpointError::Corrupt {
        path: dir.join(name),
        what: format!("cannot encode: {e}"),
    })?;
    write_bytes(storage, dir, name, &payload)
}

pub fn read<T: DeserializeOwned>(
    storage: &dyn Storage,
    path: &Path,
) -> Result<Option<T>, CheckpointError> {
    let Some(payload) = read_bytes(storage, path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&payload)
        .map(Some)
        .map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            what: format!("cannot decode: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frame_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..500)) {
            let framed = frame(&payload);
            prop_assert_eq!(unframe(&framed).unwrap(), &payload[..]);
        }

        #[test]
        fn any_damage_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..100), at in any::<proptest::sample::Index>(), xor in 1u8..=255) {
            let mut framed = frame(&payload);
            let i = at.index(framed.len());
            framed[i] ^= xor;
            prop_assert!(unframe(&framed).is_err());
        }

        #[test]
        fn truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..100), cut in any::<proptest::sample::Index>()) {
            let framed = frame(&payload);
            let keep = cut.index(framed.len());
            prop_assert!(unframe(&framed[..keep]).is_err());
        }
    }
}

//! Reading whole files, transparently gunzipping them, with errors that name the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::DataError;

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads `path`; if its content starts with the gzip magic bytes it is decompressed.
///
/// Detection is by content, not by file name, so a raw file named `.gz` (or a gzipped
/// file without the suffix) still loads.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decompress_if_gz(path, raw)
}

/// Decompresses `raw` if it is gzip, reporting failures against `path`.
pub(crate) fn decompress_if_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if raw.len() < 2 || raw[..2] != GZIP_MAGIC {
        return Ok(raw);
    }
    // Decompressed IDX files are ~1.8x (images) to ~2x the gzip size; reserve generously.
    let mut out = Vec::with_capacity(raw.len().saturating_mul(2));
    MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| DataError::Gzip {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

/// Finds the first existing file among `dir/<name>` and `dir/<name>.gz` for each name in
/// `names` (several spellings exist in the wild, e.g. `train-images-idx3-ubyte` and
/// `train-images.idx3-ubyte`).
pub(crate) fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    for name in names {
        for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Like [`find_file`] but returns a `NotFound`-style I/O error naming the expected file.
pub(crate) fn require_file(dir: &Path, names: &[&str]) -> Result<PathBuf, DataError> {
    find_file(dir, names).ok_or_else(|| {
        let first = names.first().copied().unwrap_or("?");
        let path = dir.join(first);
        DataError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("file not found (also tried {first}.gz and other standard spellings)"),
            ),
        )
    })
}

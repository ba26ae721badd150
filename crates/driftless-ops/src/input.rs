//! The one way ops reads a file whose path came from outside (a unit, a plist, an environment file
//! a unit names, `openclaw.json`, auth profiles, a file it backs up): a regular file only, at most
//! [`MAX_INPUT_BYTES`]. A FIFO would block `doctor` forever and `/dev/zero` would read until memory
//! runs out; both are refused at once, saying what the file is.

use std::io::{Error, ErrorKind};
use std::path::Path;

use driftless_core::source::{OpenError, open_regular, read_capped_file};

/// The largest such file read. Real ones are a few KiB.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;

/// Reads `path` if it is a regular file of at most [`MAX_INPUT_BYTES`]. A missing file is
/// `ErrorKind::NotFound`, as with `std::fs::read`; anything else that is refused says why.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let (file, meta) = open_regular(path).map_err(|e| match e {
        OpenError::Missing => Error::from(ErrorKind::NotFound),
        OpenError::Directory => Error::from(ErrorKind::IsADirectory),
        OpenError::NotRegular(kind) => Error::new(
            ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file"),
        ),
        OpenError::Io(e) => e,
    })?;
    let too_large = || {
        Error::new(
            ErrorKind::FileTooLarge,
            format!("it is larger than {MAX_INPUT_BYTES} bytes"),
        )
    };
    if meta.len() > MAX_INPUT_BYTES as u64 {
        return Err(too_large());
    }
    read_capped_file(file, meta.len(), MAX_INPUT_BYTES)?.ok_or_else(too_large)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(
            read(dir.path()).unwrap_err().kind(),
            ErrorKind::IsADirectory
        );
        let zero = read(Path::new("/dev/zero")).unwrap_err();
        assert!(zero.to_string().contains("character device"), "{zero}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_INPUT_BYTES + 1]).unwrap();
        assert_eq!(read(&big).unwrap_err().kind(), ErrorKind::FileTooLarge);
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "A=1\n").unwrap();
        assert_eq!(read_to_string(&ok).unwrap(), "A=1\n");
    }
}

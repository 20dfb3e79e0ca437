//! Text encodings of feed files, as real exports deliver them.
//!
//! UTF-8 (with or without a byte-order mark), UTF-16 with a BOM, and
//! Windows-1252 (what Excel writes on a UK desktop) when the bytes are not
//! valid UTF-8. Detection reads the data once; decoding streams, so a large
//! file is never held twice in memory.

use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

/// The encoding a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8,
    Utf8Bom,
    Utf16Le,
    Utf16Be,
    Windows1252,
}

impl TextEncoding {
    fn encoding(self) -> &'static Encoding {
        match self {
            TextEncoding::Utf8 | TextEncoding::Utf8Bom => UTF_8,
            TextEncoding::Utf16Le => UTF_16LE,
            TextEncoding::Utf16Be => UTF_16BE,
            TextEncoding::Windows1252 => WINDOWS_1252,
        }
    }
}

impl fmt::Display for TextEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextEncoding::Utf8 => "UTF-8",
            TextEncoding::Utf8Bom => "UTF-8 with BOM",
            TextEncoding::Utf16Le => "UTF-16LE",
            TextEncoding::Utf16Be => "UTF-16BE",
            TextEncoding::Windows1252 => "Windows-1252",
        })
    }
}

/// Detects the encoding of a seekable source and rewinds it.
pub fn detect<R: Read + Seek>(source: &mut R) -> io::Result<TextEncoding> {
    source.seek(SeekFrom::Start(0))?;
    let mut head = [0u8; 3];
    let n = read_up_to(source, &mut head)?;
    let head = &head[..n];
    let encoding = if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        TextEncoding::Utf8Bom
    } else if head.starts_with(&[0xFF, 0xFE]) {
        TextEncoding::Utf16Le
    } else if head.starts_with(&[0xFE, 0xFF]) {
        TextEncoding::Utf16Be
    } else {
        source.seek(SeekFrom::Start(0))?;
        if is_utf8(source)? {
            TextEncoding::Utf8
        } else {
            TextEncoding::Windows1252
        }
    };
    source.seek(SeekFrom::Start(0))?;
    Ok(encoding)
}

/// Whether everything `source` yields is valid UTF-8, checked in chunks.
fn is_utf8<R: Read>(source: &mut R) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes of a character split across two reads, carried to the next chunk.
    let mut carry = 0usize;
    loop {
        let n = source.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(carry == 0);
        }
        let filled = carry + n;
        match std::str::from_utf8(&buf[..filled]) {
            Ok(_) => carry = 0,
            Err(e) => {
                if e.error_len().is_some() {
                    return Ok(false);
                }
                // An incomplete sequence at the end: keep it for the next read.
                let valid = e.valid_up_to();
                buf.copy_within(valid..filled, 0);
                carry = filled - valid;
            }
        }
    }
}

fn read_up_to<R: Read>(source: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = source.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A reader that yields UTF-8 text from `source` in `encoding`, without any BOM.
pub fn decoding_reader<R: Read + Send + 'static>(
    source: R,
    encoding: TextEncoding,
) -> Box<dyn Read + Send> {
    match encoding {
        // Valid UTF-8 needs no transcoding; only a BOM to strip.
        TextEncoding::Utf8 => Box::new(source),
        _ => Box::new(
            encoding_rs_io::DecodeReaderBytesBuilder::new()
                .encoding(Some(encoding.encoding()))
                .bom_override(true)
                .build(source),
        ),
    }
}

/// Decodes a whole in-memory file to UTF-8 text.
pub fn decode_bytes(bytes: &[u8]) -> (String, TextEncoding) {
    let mut cursor = io::Cursor::new(bytes);
    // Reading from memory cannot fail.
    let encoding = detect(&mut cursor).unwrap_or(TextEncoding::Windows1252);
    let text = match encoding {
        TextEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        TextEncoding::Utf8Bom => String::from_utf8_lossy(&bytes[3..]).into_owned(),
        other => {
            let (text, _) = other.encoding().decode_with_bom_removal(bytes);
            text.into_owned()
        }
    };
    (text, encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_decodes_real_export_encodings() {
        assert_eq!(
            decode_bytes(b"a,b\n"),
            ("a,b\n".to_string(), TextEncoding::Utf8)
        );
        assert_eq!(
            decode_bytes(b"\xEF\xBB\xBFa\n"),
            ("a\n".to_string(), TextEncoding::Utf8Bom)
        );
        assert_eq!(
            decode_bytes(b"caf\xE9 \x96 \x80\n"),
            ("café – €\n".to_string(), TextEncoding::Windows1252)
        );
        assert_eq!(
            decode_bytes(b"\xFF\xFEa\x00,\x00b\x00"),
            ("a,b".to_string(), TextEncoding::Utf16Le)
        );
        assert_eq!(
            decode_bytes(b"\xFE\xFF\x00a"),
            ("a".to_string(), TextEncoding::Utf16Be)
        );
    }

    #[test]
    fn utf8_split_across_reads_is_still_utf8() {
        let mut text = "x".repeat(64 * 1024 - 1);
        text.push('é');
        let mut cursor = io::Cursor::new(text.into_bytes());
        assert_eq!(detect(&mut cursor).unwrap(), TextEncoding::Utf8);
    }

    #[test]
    fn streaming_matches_whole_decoding() {
        let bytes = b"\xEF\xBB\xBFsample,notes\n1,caf\xC3\xA9\n".to_vec();
        let mut cursor = io::Cursor::new(bytes.clone());
        let enc = detect(&mut cursor).unwrap();
        let mut out = String::new();
        decoding_reader(cursor, enc)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, decode_bytes(&bytes).0);
    }
}

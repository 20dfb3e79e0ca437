//! Text encodings of feed files, as real exports deliver them.
//!
//! UTF-8 (with or without a byte-order mark), UTF-16 with a BOM, and
//! Windows-1252 (what Excel writes on a UK desktop) when the bytes are not
//! UTF-8. Detection reads the data once; decoding streams, so a large file is
//! never held twice in memory.
//!
//! The encoding is decided per file, by the evidence: a file whose non-ASCII
//! text is mostly valid UTF-8 is UTF-8 even with a few invalid bytes, and is
//! passed on undecoded, so the parsers set aside only the rows holding the
//! invalid bytes (rather than reading every correct row's accents as
//! Windows-1252: `café` as `cafÃ©`). Nothing is ever replaced silently.

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
    let mut sniffer = EncodingSniffer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 || !sniffer.feed(&buf[..n]) {
            break;
        }
    }
    source.seek(SeekFrom::Start(0))?;
    Ok(sniffer.finish())
}

/// [`detect`] for a file on disk, looked at through memory maps a window at a
/// time rather than read: a long file (replay's) is then not copied once to
/// detect its encoding and again to parse it. Falls back to reading where a
/// file cannot be mapped (a pipe, a special file). Leaves the file at its start.
///
/// As with any map, a file cut short by another process while it is looked at
/// ends the process with SIGBUS; replay reads files an operator names, not a
/// feed folder that producers write to.
pub fn detect_file(file: &mut std::fs::File) -> io::Result<TextEncoding> {
    /// Bytes mapped at a time: enough that mapping costs nothing per byte,
    /// little enough that the map adds nothing much to the resident memory.
    const WINDOW: u64 = 16 * 1024 * 1024;
    let metadata = file.metadata()?;
    let len = metadata.len();
    if !metadata.is_file() || len == 0 {
        return detect(file);
    }
    let mut sniffer = EncodingSniffer::default();
    let mut offset = 0u64;
    while offset < len {
        let window = usize::try_from(WINDOW.min(len - offset)).unwrap_or(usize::MAX);
        // SAFETY: the map is read-only and dropped before the next window; the
        // only way for it to change under us is another process truncating or
        // rewriting the file, which the caveat above accepts for replay.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(window)
                .map(&*file)
        };
        let Ok(map) = map else {
            return detect(file);
        };
        // One pass: the pages are read once, in order.
        let _ = map.advise(memmap2::Advice::Sequential);
        let more = sniffer.feed(&map);
        offset += window as u64;
        if !more {
            break;
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(sniffer.finish())
}

/// Works out a file's encoding from its bytes as they stream past, so the
/// intake can detect it in the same pass that hashes the file.
#[derive(Debug, Default)]
pub struct EncodingSniffer {
    /// The first bytes, for a byte-order mark.
    head: [u8; 3],
    head_len: usize,
    /// Bytes of a character split across two chunks, carried to the next.
    carry: [u8; 4],
    carry_len: usize,
    /// Valid non-ASCII UTF-8 characters seen: evidence for UTF-8.
    utf8_chars: u64,
    /// Invalid UTF-8 sequences seen: evidence against it.
    invalid: u64,
    /// A byte Windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D)
    /// outside valid UTF-8: the file is not Windows-1252 text either.
    undefined_in_1252: bool,
}

impl EncodingSniffer {
    /// Takes the next chunk. Returns whether more bytes could still change
    /// the answer (a file that is already not UTF-8 stays so).
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        while self.head_len < 3 && !chunk.is_empty() {
            self.head[self.head_len] = chunk[0];
            self.head_len += 1;
            self.check_utf8(&chunk[..1]);
            chunk = &chunk[1..];
        }
        if self.bom().is_some() {
            // A byte-order mark decides it, whatever follows.
            return false;
        }
        self.check_utf8(chunk);
        true
    }

    fn bom(&self) -> Option<TextEncoding> {
        let head = &self.head[..self.head_len];
        if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
            Some(TextEncoding::Utf8Bom)
        } else if head.starts_with(&[0xFF, 0xFE]) {
            Some(TextEncoding::Utf16Le)
        } else if head.starts_with(&[0xFE, 0xFF]) {
            Some(TextEncoding::Utf16Be)
        } else {
            None
        }
    }

    fn check_utf8(&mut self, mut chunk: &[u8]) {
        // Complete a character left over from the last chunk, byte by byte.
        while self.carry_len > 0 && !chunk.is_empty() {
            self.carry[self.carry_len] = chunk[0];
            self.carry_len += 1;
            chunk = &chunk[1..];
            match std::str::from_utf8(&self.carry[..self.carry_len]) {
                Ok(_) => {
                    self.utf8_chars += 1;
                    self.carry_len = 0;
                }
                Err(e) if e.error_len().is_some() || self.carry_len == 4 => {
                    let lead = self.carry[0];
                    self.invalid_bytes(&[lead]);
                    // The bytes after the bad lead are looked at again as text.
                    let rest = self.carry[1..self.carry_len].to_vec();
                    self.carry_len = 0;
                    self.check_utf8(&rest);
                }
                Err(_) => {}
            }
        }
        loop {
            match std::str::from_utf8(chunk) {
                Ok(text) => {
                    self.utf8_chars += count_non_ascii(text.as_bytes());
                    return;
                }
                Err(e) => {
                    let (valid, rest) = chunk.split_at(e.valid_up_to());
                    self.utf8_chars += count_non_ascii(valid);
                    match e.error_len() {
                        Some(n) => {
                            self.invalid_bytes(&rest[..n]);
                            chunk = &rest[n..];
                        }
                        None => {
                            // Cut at the chunk's end: finished by the next one.
                            self.carry[..rest.len()].copy_from_slice(rest);
                            self.carry_len = rest.len();
                            return;
                        }
                    }
                }
            }
        }
    }

    fn invalid_bytes(&mut self, bytes: &[u8]) {
        self.invalid += 1;
        self.undefined_in_1252 |= bytes
            .iter()
            .any(|b| matches!(b, 0x81 | 0x8D | 0x8F | 0x90 | 0x9D));
    }

    /// How many invalid UTF-8 sequences a file read as UTF-8 holds: the rows
    /// holding them are set aside.
    pub fn invalid_utf8(&self) -> u64 {
        self.invalid + u64::from(self.carry_len > 0)
    }

    /// The encoding of everything fed.
    pub fn finish(&self) -> TextEncoding {
        let invalid = self.invalid_utf8();
        match self.bom() {
            Some(bom) => bom,
            None if invalid == 0 => TextEncoding::Utf8,
            // Windows-1252 text almost never holds valid UTF-8 sequences (a
            // letter from Â to ß followed by a symbol from € to ¿), so valid
            // ones outnumbering the invalid say UTF-8 with a few stray bytes.
            None if self.undefined_in_1252 || self.utf8_chars >= invalid => TextEncoding::Utf8,
            None => TextEncoding::Windows1252,
        }
    }
}

/// Bytes with values of 0x80 and above that start a character: one per
/// non-ASCII character of valid UTF-8.
fn count_non_ascii(valid: &[u8]) -> u64 {
    // Most exports are ASCII: a word-at-a-time check, then nothing to count.
    if valid.is_ascii() {
        return 0;
    }
    valid.iter().filter(|&&b| b >= 0xC0).count() as u64
}

/// A reader that yields UTF-8 text from `source` in `encoding`, without any BOM.
/// UTF-8 is passed on as it is (invalid bytes included, for the parsers to
/// set their rows aside), never with replacement characters.
pub fn decoding_reader<'r, R: Read + Send + 'r>(
    source: R,
    encoding: TextEncoding,
) -> Box<dyn Read + Send + 'r> {
    match encoding {
        TextEncoding::Utf8 => Box::new(source),
        TextEncoding::Utf8Bom => Box::new(WithoutBom { source, to_skip: 3 }),
        _ => Box::new(
            encoding_rs_io::DecodeReaderBytesBuilder::new()
                .encoding(Some(encoding.encoding()))
                .bom_override(true)
                .build(source),
        ),
    }
}

/// UTF-8 after its byte-order mark, otherwise unchanged.
struct WithoutBom<R> {
    source: R,
    to_skip: usize,
}

impl<R: Read> Read for WithoutBom<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.to_skip > 0 {
            let mut bom = [0u8; 3];
            let n = self.source.read(&mut bom[..self.to_skip])?;
            if n == 0 {
                return Ok(0);
            }
            self.to_skip -= n;
        }
        self.source.read(out)
    }
}

/// Decodes a whole in-memory file as [`decoding_reader`] does: UTF-8 as it
/// is (without a BOM; invalid bytes kept, for the parsers to set their rows
/// aside), anything else transcoded to UTF-8.
pub fn decode_bytes(bytes: &[u8]) -> (Vec<u8>, TextEncoding) {
    let mut cursor = io::Cursor::new(bytes);
    // Reading from memory cannot fail.
    let encoding = detect(&mut cursor).unwrap_or(TextEncoding::Windows1252);
    let text = match encoding {
        TextEncoding::Utf8 => bytes.to_vec(),
        TextEncoding::Utf8Bom => bytes[3..].to_vec(),
        other => {
            let (text, _) = other.encoding().decode_with_bom_removal(bytes);
            text.into_owned().into_bytes()
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
            ("a,b\n".as_bytes().to_vec(), TextEncoding::Utf8)
        );
        assert_eq!(
            decode_bytes(b"\xEF\xBB\xBFa\n"),
            ("a\n".as_bytes().to_vec(), TextEncoding::Utf8Bom)
        );
        assert_eq!(
            decode_bytes(b"caf\xE9 \x96 \x80\n"),
            ("café – €\n".as_bytes().to_vec(), TextEncoding::Windows1252)
        );
        assert_eq!(
            decode_bytes(b"\xFF\xFEa\x00,\x00b\x00"),
            ("a,b".as_bytes().to_vec(), TextEncoding::Utf16Le)
        );
        assert_eq!(
            decode_bytes(b"\xFE\xFF\x00a"),
            ("a".as_bytes().to_vec(), TextEncoding::Utf16Be)
        );
    }

    #[test]
    fn a_few_stray_bytes_in_utf8_text_leave_it_utf8() {
        let sniff = |bytes: &[u8]| {
            let mut sniffer = EncodingSniffer::default();
            sniffer.feed(bytes);
            (sniffer.finish(), sniffer.invalid_utf8())
        };
        // Accents in UTF-8, one stray byte: UTF-8, one bad sequence.
        assert_eq!(
            sniff(b"caf\xC3\xA9\nbad \xFF\nna\xC3\xAFve\n"),
            (TextEncoding::Utf8, 1)
        );
        // Windows-1252 text: its accents are never valid UTF-8.
        assert_eq!(
            sniff(b"caf\xE9\nna\xEFve \x96 \x80\n").0,
            TextEncoding::Windows1252
        );
        // A byte Windows-1252 leaves undefined: not Windows-1252 text either.
        assert_eq!(sniff(b"plain \x81 text\n").0, TextEncoding::Utf8);
        // Split anywhere, the same answer.
        let bytes = b"caf\xC3\xA9 \xFF\xC3\xA9\xE2\x82\xAC";
        for split in 0..=bytes.len() {
            let mut sniffer = EncodingSniffer::default();
            sniffer.feed(&bytes[..split]);
            sniffer.feed(&bytes[split..]);
            assert_eq!(
                (sniffer.finish(), sniffer.invalid_utf8()),
                (TextEncoding::Utf8, 1),
                "split at {split}"
            );
        }
    }

    #[test]
    fn utf8_split_across_reads_is_still_utf8() {
        let mut text = "x".repeat(64 * 1024 - 1);
        text.push('é');
        let mut cursor = io::Cursor::new(text.into_bytes());
        assert_eq!(detect(&mut cursor).unwrap(), TextEncoding::Utf8);
    }

    #[test]
    fn the_sniffer_agrees_with_detection_however_the_bytes_are_split() {
        let samples: [&[u8]; 8] = [
            b"caf\xC3\xA9 \xFF\n",
            b"\xEF\xBB\xBFcaf\xC3\xA9 \xFF\n",
            b"a,b\n",
            "caf\u{e9},\u{20ac}\n".as_bytes(),
            b"caf\xE9 \x96 \x80\n",
            b"\xEF\xBB\xBFa\n",
            b"\xFF\xFEa\x00",
            b"x\xE2\x82",
        ];
        for bytes in samples {
            let expected = detect(&mut io::Cursor::new(bytes)).unwrap();
            for split in 0..=bytes.len() {
                let mut sniffer = EncodingSniffer::default();
                sniffer.feed(&bytes[..split]);
                sniffer.feed(&bytes[split..]);
                assert_eq!(sniffer.finish(), expected, "{bytes:?} split at {split}");
            }
        }
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
        assert_eq!(out.into_bytes(), decode_bytes(&bytes).0);
    }
}

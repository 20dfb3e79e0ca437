//! The elements of a JSON array file (`format = "json"`), one at a time, as the
//! text is read: a file of any size up to `max_file_bytes` is parsed in memory
//! bounded by its largest element, not by the file.
//!
//! This only finds where each top-level element begins and ends (tracking
//! strings and nesting); serde_json parses each element. Each element comes
//! with its byte offset, line and column, so a bad one is quarantined verbatim
//! and reported where it starts.

use std::io::BufRead;

/// One top-level element of the array, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Its text, without the whitespace around it.
    pub text: Vec<u8>,
    /// Byte offset of its first byte in the (decoded) file.
    pub start: u64,
    /// Line (1-based) and column (1-based, in bytes) of its first byte.
    pub line: u64,
    pub column: u64,
}

/// Why the file is not a JSON array at all, or not a well-formed one; the whole
/// file is refused. `line`/`column` say where (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayError {
    pub message: String,
    pub line: u64,
    pub column: u64,
    /// The file does not begin with `[`: it may be valid JSON of another shape (one
    /// object, a number), so the caller must not call it invalid JSON.
    pub not_an_array: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Before the opening `[`.
    Open,
    /// After `[` or `,`: an element, or (only right after `[`) the closing `]`.
    Element { first: bool },
    /// After the closing `]`: only whitespace.
    Done,
}

/// Reads the elements of a JSON array from `reader`.
pub struct ArrayElements<R> {
    reader: R,
    expect: Expect,
    offset: u64,
    line: u64,
    column: u64,
    previous: u8,
    finished: bool,
}

impl<R: BufRead> ArrayElements<R> {
    pub fn new(reader: R) -> Self {
        ArrayElements {
            reader,
            expect: Expect::Open,
            offset: 0,
            line: 1,
            column: 0,
            previous: 0,
            finished: false,
        }
    }

    fn error(&self, message: impl Into<String>) -> ArrayError {
        ArrayError {
            message: message.into(),
            line: self.line,
            column: self.column.max(1),
            not_an_array: false,
        }
    }

    /// Moves the position past `b`: CRLF, LF and a lone CR each end a line, as
    /// the other formats count them.
    fn advance(&mut self, b: u8) {
        self.offset += 1;
        match b {
            b'\n' if self.previous == b'\r' => {}
            b'\n' | b'\r' => {
                self.line += 1;
                self.column = 0;
            }
            _ => self.column += 1,
        }
        self.previous = b;
    }

    /// The next byte, consumed, or `None` at the end of the text.
    fn next_byte(&mut self) -> std::io::Result<Option<u8>> {
        let b = match self.reader.fill_buf()?.first() {
            Some(&b) => b,
            None => return Ok(None),
        };
        self.reader.consume(1);
        self.advance(b);
        Ok(Some(b))
    }

    /// The next byte that is not JSON whitespace, consumed.
    fn next_significant(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            match self.next_byte()? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => continue,
                other => return Ok(other),
            }
        }
    }

    /// Reads one element whose first byte `first` was just consumed, up to the
    /// `,` or `]` that ends it (consumed too). Returns the element and whether
    /// that was the closing `]`.
    fn element(&mut self, first: u8) -> Result<(Element, bool), ArrayError> {
        let mut element = Element {
            text: vec![first],
            start: self.offset - 1,
            line: self.line,
            column: self.column,
        };
        let mut depth: u32 = 0;
        let mut in_string = false;
        let mut escaped = false;
        let mut track = |b: u8, depth: &mut u32| -> bool {
            // true when `b` ends the element (a `,` or `]` at the top level).
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                return false;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => *depth += 1,
                b'}' | b']' if *depth > 0 => *depth -= 1,
                b',' | b']' if *depth == 0 => return true,
                _ => {}
            }
            false
        };
        if track(first, &mut depth) {
            unreachable!("the caller hands over a byte that starts an element, never `,` or `]`");
        }
        loop {
            let Some(b) = self
                .next_byte()
                .map_err(|e| self.error(format!("cannot read the file: {e}")))?
            else {
                return Err(self.error("EOF while parsing a list (the array has no closing `]`)"));
            };
            if track(b, &mut depth) {
                while element
                    .text
                    .last()
                    .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
                {
                    element.text.pop();
                }
                return Ok((element, b == b']'));
            }
            element.text.push(b);
        }
    }

    /// The next element, `Ok(None)` after the closing `]`, or why the text is not
    /// a well-formed array (then nothing more is read).
    pub fn next_element(&mut self) -> Result<Option<Element>, ArrayError> {
        if self.finished {
            return Ok(None);
        }
        let result = self.step();
        if !matches!(result, Ok(Some(_))) {
            self.finished = true;
        }
        result
    }

    fn step(&mut self) -> Result<Option<Element>, ArrayError> {
        let read_error =
            |s: &Self, e: std::io::Error| s.error(format!("cannot read the file: {e}"));
        loop {
            let b = self.next_significant().map_err(|e| read_error(self, e))?;
            match (self.expect, b) {
                (Expect::Open, Some(b'[')) => self.expect = Expect::Element { first: true },
                (Expect::Open, found) => {
                    let found = match found {
                        None => {
                            return Err(self.error("EOF while parsing a value (the file is empty)"));
                        }
                        Some(b'{') => "an object",
                        Some(b'"') => "a string",
                        Some(b't' | b'f') => "true/false",
                        Some(b'n') => "null",
                        Some(b'-' | b'0'..=b'9') => "a number",
                        Some(_) => "text that is not JSON",
                    };
                    return Err(ArrayError {
                        not_an_array: true,
                        ..self.error(format!(
                            "expected a JSON array of objects [{{...}}, {{...}}], found {found}"
                        ))
                    });
                }
                (Expect::Element { first: true }, Some(b']')) => {
                    self.expect = Expect::Done;
                }
                (Expect::Element { .. }, Some(b']' | b',')) => {
                    return Err(self.error(
                        "expected an element of the array here (a stray or trailing comma?)",
                    ));
                }
                (Expect::Element { .. }, None) => {
                    return Err(
                        self.error("EOF while parsing a list (the array has no closing `]`)")
                    );
                }
                (Expect::Element { .. }, Some(b)) => {
                    let (element, closed) = self.element(b)?;
                    self.expect = if closed {
                        Expect::Done
                    } else {
                        Expect::Element { first: false }
                    };
                    return Ok(Some(element));
                }
                (Expect::Done, None) => return Ok(None),
                (Expect::Done, Some(_)) => {
                    return Err(self.error("trailing characters after the array's closing `]`"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Result<Vec<(String, u64, u64, u64)>, ArrayError> {
        let mut elements = ArrayElements::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(e) = elements.next_element()? {
            out.push((
                String::from_utf8(e.text).unwrap(),
                e.start,
                e.line,
                e.column,
            ));
        }
        Ok(out)
    }

    #[test]
    fn elements_come_with_where_they_start() {
        let text =
            "[{\"a\": \"x,]}\\\"\"}, 3,\r\n\n {\r\n  \"b\": [1, {\"c\": 2}]\r\n }\n, 1e400 ]\n";
        let got = all(text).unwrap();
        assert_eq!(
            got,
            vec![
                ("{\"a\": \"x,]}\\\"\"}".to_string(), 1, 1, 2),
                ("3".to_string(), 18, 1, 19),
                ("{\r\n  \"b\": [1, {\"c\": 2}]\r\n }".to_string(), 24, 3, 2),
                ("1e400".to_string(), 54, 6, 3),
            ]
        );
        for (text_of, start, ..) in &got {
            assert_eq!(
                &text[*start as usize..*start as usize + text_of.len()],
                text_of
            );
        }
    }

    #[test]
    fn empty_arrays_and_whitespace_are_fine() {
        assert_eq!(all(" [ ] \n").unwrap(), vec![]);
        assert_eq!(all("[]").unwrap(), vec![]);
    }

    #[test]
    fn what_is_not_an_array_is_said_with_where() {
        let e = all("{\"a\": 1}").unwrap_err();
        assert!(e.message.contains("found an object"), "{e:?}");
        assert_eq!((e.line, e.column), (1, 1));
        let e = all("").unwrap_err();
        assert!(e.message.contains("empty"), "{e:?}");
        let e = all("[1, 2\n").unwrap_err();
        assert!(e.message.contains("no closing"), "{e:?}");
        let e = all("[1,\n ,2]").unwrap_err();
        assert_eq!((e.line, e.column), (2, 2), "{e:?}");
        let e = all("[1,]").unwrap_err();
        assert!(e.message.contains("trailing comma"), "{e:?}");
        let e = all("[1] x").unwrap_err();
        assert!(e.message.contains("trailing characters"), "{e:?}");
        let e = all("[\"unclosed]").unwrap_err();
        assert!(e.message.contains("no closing"), "{e:?}");
    }
}

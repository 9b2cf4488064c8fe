//! Tokenizer for nginx configuration syntax.
//!
//! Rules follow nginx's `ngx_conf_read_token`: words are separated by white
//! space and `;`, `{`, `}`; `#` starts a comment only where a token could
//! start; single and double quotes group a word and allow escapes (`\"`,
//! `\'`, `\\`, `\t`, `\r`, `\n`; any other `\x` is kept as written);
//! `${name}` keeps its braces inside the word.

use super::ConfError;
use std::sync::Arc;

/// One token with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A word or quoted string (quotes removed, escapes applied).
    Word(String),
    /// `;`
    Semi,
    /// `{`
    Open,
    /// `}`
    Close,
}

/// Streams tokens out of one file's text.
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: u32,
    file: Arc<str>,
}

impl<'a> Lexer<'a> {
    /// Starts at the beginning of `src`, naming `file` in errors.
    pub fn new(src: &'a str, file: Arc<str>) -> Self {
        Lexer { src: src.as_bytes(), pos: 0, line: 1, file }
    }

    /// The current line (of the last token returned, or of the end).
    pub fn line(&self) -> u32 {
        self.line
    }

    fn err(&self, msg: String) -> ConfError {
        ConfError::at(msg, &self.file, self.line)
    }

    /// Returns the next token and its line, or `None` at end of file.
    pub fn next_token(&mut self) -> Result<Option<(Tok, u32)>, ConfError> {
        // Skip white space and comments.
        loop {
            match self.src.get(self.pos) {
                None => return Ok(None),
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'#') => {
                    while let Some(&c) = self.src.get(self.pos) {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some(_) => break,
            }
        }
        let line = self.line;
        let c = self.src[self.pos];
        let tok = match c {
            b';' => {
                self.pos += 1;
                Tok::Semi
            }
            b'{' => {
                self.pos += 1;
                Tok::Open
            }
            b'}' => {
                self.pos += 1;
                Tok::Close
            }
            b'"' | b'\'' => Tok::Word(self.quoted(c)?),
            _ => Tok::Word(self.bare()?),
        };
        Ok(Some((tok, line)))
    }

    fn quoted(&mut self, q: u8) -> Result<String, ConfError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.src.get(self.pos) else {
                return Err(self.err("unexpected end of file, expecting \";\" or \"}\"".into()));
            };
            self.pos += 1;
            match c {
                b'\\' => self.escape(&mut out),
                b'\n' => {
                    self.line += 1;
                    out.push(c);
                }
                c if c == q => break,
                c => out.push(c),
            }
        }
        // A quoted word must end where a token may end; as in nginx, a ')'
        // may follow at once and starts the next word (`if ($a = "")`).
        match self.src.get(self.pos) {
            None | Some(b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' | b')') => {}
            Some(&c) => return Err(self.err(format!("unexpected \"{}\"", c as char))),
        }
        self.utf8(out)
    }

    fn bare(&mut self) -> Result<String, ConfError> {
        let mut out = Vec::new();
        let mut in_var_braces = false;
        while let Some(&c) = self.src.get(self.pos) {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' | b';' => break,
                b'{' if out.last() != Some(&b'$') && !in_var_braces => break,
                b'}' if !in_var_braces => break,
                b'{' => {
                    in_var_braces = true;
                    out.push(c);
                    self.pos += 1;
                }
                b'}' => {
                    in_var_braces = false;
                    out.push(c);
                    self.pos += 1;
                }
                b'\\' => {
                    self.pos += 1;
                    self.escape(&mut out);
                }
                _ => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        self.utf8(out)
    }

    /// Applies one escape; `pos` is just past the backslash.
    fn escape(&mut self, out: &mut Vec<u8>) {
        let Some(&c) = self.src.get(self.pos) else {
            out.push(b'\\');
            return;
        };
        self.pos += 1;
        match c {
            b'"' | b'\'' | b'\\' => out.push(c),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            _ => {
                if c == b'\n' {
                    self.line += 1;
                }
                out.push(b'\\');
                out.push(c);
            }
        }
    }

    fn utf8(&self, v: Vec<u8>) -> Result<String, ConfError> {
        String::from_utf8(v).map_err(|_| self.err("invalid UTF-8 in token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Tok> {
        let mut l = Lexer::new(s, "t".into());
        let mut v = Vec::new();
        while let Some((t, _)) = l.next_token().unwrap() {
            v.push(t);
        }
        v
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.into())
    }

    #[test]
    fn tokens_table() {
        let cases: &[(&str, Vec<Tok>)] = &[
            ("a b;", vec![w("a"), w("b"), Tok::Semi]),
            ("a 'b c';", vec![w("a"), w("b c"), Tok::Semi]),
            (r#"a "x\"y";"#, vec![w("a"), w("x\"y"), Tok::Semi]),
            (r#"a "\t\d";"#, vec![w("a"), w("\t\\d"), Tok::Semi]),
            ("a b# c;\n;", vec![w("a"), w("b#"), w("c"), Tok::Semi, Tok::Semi]),
            ("# only\nx{}", vec![w("x"), Tok::Open, Tok::Close]),
            ("set $a ${b}c;", vec![w("set"), w("$a"), w("${b}c"), Tok::Semi]),
            ("a\\ b;", vec![w("a\\ b"), Tok::Semi]),
        ];
        for (src, want) in cases {
            assert_eq!(&words(src), want, "source {src:?}");
        }
    }

    #[test]
    fn unterminated_quote_reports_line() {
        let mut l = Lexer::new("a\n'b\n", "f.conf".into());
        l.next_token().unwrap();
        let e = l.next_token().unwrap_err();
        assert_eq!(e.to_string(), "unexpected end of file, expecting \";\" or \"}\" in f.conf:3");
    }

    #[test]
    fn junk_after_quote() {
        let mut l = Lexer::new("'a'b;", "f".into());
        assert_eq!(l.next_token().unwrap_err().to_string(), "unexpected \"b\" in f:1");
    }

    #[test]
    fn paren_after_quote_starts_a_word() {
        assert_eq!(words("if ($a = \"\") {"), [w("if"), w("($a"), w("="), w(""), w(")"), Tok::Open]);
    }
}

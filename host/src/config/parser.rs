//! Builds the directive tree from tokens and splices `include` files in.
//!
//! `include` is resolved while parsing, in any context, as nginx does:
//! a relative path is taken against the directory of the main config
//! file (the "conf prefix"), and a path with glob characters includes every
//! match in sorted order (no match is not an error); a plain path that cannot
//! be opened is.

use super::lexer::{Lexer, Tok};
use super::{ConfError, Directive};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The parsed configuration and the text of every file read (for `-T`).
#[derive(Debug, Default)]
pub struct Parsed {
    /// Top-level (main context) directives.
    pub root: Vec<Directive>,
    /// Every file read, in order, with its contents.
    pub files: Vec<(PathBuf, String)>,
}

/// Parses the main config file at `path`; `extra` is the `-g` text, which
/// is parsed first as nginx does so that duplicates name the file line.
pub fn parse_file(path: &Path, extra: Option<&str>) -> Result<Parsed, ConfError> {
    let conf_prefix = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut p = Parser { conf_prefix, parsed: Parsed::default(), depth: 0 };
    let mut root = Vec::new();
    if let Some(text) = extra {
        root = p.parse_text(text, Arc::from("command line"))?;
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfError::bare(format!("open() \"{}\" failed ({})", path.display(), os_err(&e)))
    })?;
    p.parsed.files.push((path.to_path_buf(), text.clone()));
    root.extend(p.parse_text(&text, Arc::from(path.to_string_lossy().as_ref()))?);
    p.parsed.root = root;
    Ok(p.parsed)
}

/// Parses a string as a whole config (tests and `-g`).
pub fn parse_str(text: &str, name: &str) -> Result<Vec<Directive>, ConfError> {
    let mut p = Parser { conf_prefix: PathBuf::from("."), parsed: Parsed::default(), depth: 0 };
    p.parse_text(text, Arc::from(name))
}

/// Renders an io error as nginx does: `2: No such file or directory`.
pub fn os_err(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = e.to_string();
            let msg = s.split(" (os error").next().unwrap_or(&s);
            format!("{n}: {msg}")
        }
        None => e.to_string(),
    }
}

struct Parser {
    conf_prefix: PathBuf,
    parsed: Parsed,
    depth: u32,
}

impl Parser {
    fn parse_text(&mut self, text: &str, file: Arc<str>) -> Result<Vec<Directive>, ConfError> {
        let mut lx = Lexer::new(text, file.clone());
        self.block(&mut lx, &file, false)
    }

    /// Reads directives until `}` (if `in_block`) or end of file.
    fn block(
        &mut self,
        lx: &mut Lexer<'_>,
        file: &Arc<str>,
        in_block: bool,
    ) -> Result<Vec<Directive>, ConfError> {
        let mut out = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut first_line = 0;
        loop {
            let Some((tok, line)) = lx.next_token()? else {
                if !words.is_empty() {
                    return Err(ConfError::at(
                        "unexpected end of file, expecting \";\" or \"}\"",
                        file,
                        lx.line(),
                    ));
                }
                if in_block {
                    return Err(ConfError::at(
                        "unexpected end of file, expecting \"}\"",
                        file,
                        lx.line(),
                    ));
                }
                return Ok(out);
            };
            match tok {
                Tok::Word(w) => {
                    if words.is_empty() {
                        first_line = line;
                    }
                    words.push(w);
                }
                Tok::Semi => {
                    if words.is_empty() {
                        return Err(ConfError::at("unexpected \";\"", file, line));
                    }
                    let name = words.remove(0);
                    let args = std::mem::take(&mut words);
                    let d = Directive { name, args, file: file.clone(), line: first_line, block: None };
                    if d.name == "include" {
                        out.extend(self.include(&d)?);
                    } else {
                        out.push(d);
                    }
                }
                Tok::Open => {
                    if words.is_empty() {
                        return Err(ConfError::at("unexpected \"{\"", file, line));
                    }
                    if self.depth > 64 {
                        return Err(ConfError::at("too deep nesting of blocks", file, line));
                    }
                    self.depth += 1;
                    let children = self.block(lx, file, true)?;
                    self.depth -= 1;
                    let name = words.remove(0);
                    let args = std::mem::take(&mut words);
                    out.push(Directive {
                        name,
                        args,
                        file: file.clone(),
                        line: first_line,
                        block: Some(children),
                    });
                }
                Tok::Close => {
                    if !words.is_empty() || !in_block {
                        return Err(ConfError::at("unexpected \"}\"", file, line));
                    }
                    return Ok(out);
                }
            }
        }
    }

    fn include(&mut self, d: &Directive) -> Result<Vec<Directive>, ConfError> {
        if d.args.len() != 1 {
            return Err(d.err("invalid number of arguments in \"include\" directive"));
        }
        let arg = Path::new(&d.args[0]);
        let full = if arg.is_absolute() { arg.to_path_buf() } else { self.conf_prefix.join(arg) };
        let full_s = full.to_string_lossy().into_owned();
        let paths: Vec<PathBuf> = if full_s.contains(['*', '?', '[']) {
            let mut v: Vec<PathBuf> = glob::glob(&full_s)
                .map_err(|e| d.err(format!("invalid glob pattern \"{full_s}\": {e}")))?
                .filter_map(Result::ok)
                .filter(|p| !p.is_dir())
                .collect();
            v.sort();
            v
        } else {
            vec![full]
        };
        let mut out = Vec::new();
        for path in paths {
            if self.parsed.files.len() > 4096 {
                return Err(d.err("too many included files (include loop?)"));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                d.err(format!("open() \"{}\" failed ({})", path.display(), os_err(&e)))
            })?;
            self.parsed.files.push((path.clone(), text.clone()));
            self.depth += 1;
            if self.depth > 64 {
                return Err(d.err("too deep nesting of includes (include loop?)"));
            }
            let name: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
            let mut lx = Lexer::new(&text, name.clone());
            out.extend(self.block(&mut lx, &name, false)?);
            self.depth -= 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_shape() {
        let t = parse_str("a 1;\nb { c 2 3; d { } }\n", "t").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].args, vec!["1"]);
        assert_eq!(t[1].line, 2);
        let b = t[1].children();
        assert_eq!(b[0].name, "c");
        assert_eq!(b[0].args, vec!["2", "3"]);
        assert_eq!(b[1].block.as_deref(), Some(&[][..]));
    }

    #[test]
    fn syntax_errors_table() {
        let cases = [
            ("a {\n b;\n", "unexpected end of file, expecting \"}\" in t:3"),
            ("a b", "unexpected end of file, expecting \";\" or \"}\" in t:1"),
            ("a;\n}\n", "unexpected \"}\" in t:2"),
            ("a {\n b }\n", "unexpected \"}\" in t:2"),
            ("\n;", "unexpected \";\" in t:2"),
            ("{", "unexpected \"{\" in t:1"),
            ("include;", "invalid number of arguments in \"include\" directive in t:1"),
        ];
        for (src, want) in cases {
            assert_eq!(parse_str(src, "t").unwrap_err().to_string(), want, "source {src:?}");
        }
    }

    #[test]
    fn include_glob_relative_to_conf_dir() {
        let dir = std::env::temp_dir().join(format!("ngxr-inc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/b.conf"), "b 2;").unwrap();
        std::fs::write(dir.join("conf.d/a.conf"), "a 1;").unwrap();
        std::fs::write(dir.join("main.conf"), "x { include conf.d/*.conf; }\ninclude missing.conf;\n")
            .unwrap();
        let e = parse_file(&dir.join("main.conf"), None).unwrap_err();
        assert!(e.to_string().starts_with("open() \""), "{e}");
        assert!(e.to_string().ends_with("main.conf:2"), "{e}");
        std::fs::write(dir.join("main.conf"), "x { include conf.d/*.conf; }\n").unwrap();
        let p = parse_file(&dir.join("main.conf"), Some("g 1;")).unwrap();
        let names: Vec<_> = p.root[1].children().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(p.root[0].name, "g");
        assert_eq!(names, ["a", "b"]);
        assert_eq!(p.files.len(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

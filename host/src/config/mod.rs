//! Configuration: nginx syntax in, a checked directive tree out.
//!
//! Three stages, each its own module:
//! - [`lexer`] turns text into tokens;
//! - [`parser`] builds the [`Directive`] tree, splicing `include`d files in;
//! - [`table`] checks every directive against the registry of known
//!   directives (context, argument count, block or not, duplicates).
//!
//! [`core`] then reads the host's own settings out of the checked tree.
//! Plugins add directives to the registry and read theirs the same way.

pub mod core;
pub mod lexer;
pub mod parser;
pub mod table;

use std::fmt;
use std::sync::Arc;

/// A configuration error, rendered as nginx does: `message in file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    /// What is wrong, without the location.
    pub msg: String,
    /// Where, if known: file name and 1-based line.
    pub at: Option<(Arc<str>, u32)>,
}

impl ConfError {
    /// An error at `file:line`.
    pub fn at(msg: impl Into<String>, file: &Arc<str>, line: u32) -> Self {
        ConfError { msg: msg.into(), at: Some((file.clone(), line)) }
    }

    /// An error with no position (e.g. the main file cannot be opened).
    pub fn bare(msg: impl Into<String>) -> Self {
        ConfError { msg: msg.into(), at: None }
    }
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some((file, line)) => write!(f, "{} in {}:{}", self.msg, file, line),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for ConfError {}

/// One directive as written: `name args…;` or `name args… { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The directive's name (first word).
    pub name: String,
    /// The remaining words, quotes removed, `$variables` kept verbatim.
    pub args: Vec<String>,
    /// The file it was read from (or `command line` for `-g`).
    pub file: Arc<str>,
    /// 1-based line of the directive's name.
    pub line: u32,
    /// The block's children, for `name … { … }`.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// An error located at this directive.
    pub fn err(&self, msg: impl Into<String>) -> ConfError {
        ConfError::at(msg, &self.file, self.line)
    }

    /// The standard "invalid value" error for argument `i`.
    pub fn invalid(&self, i: usize) -> ConfError {
        self.err(format!("invalid value \"{}\" in \"{}\" directive", self.args[i], self.name))
    }

    /// Parses argument 0 as `on`/`off`.
    pub fn flag(&self) -> Result<bool, ConfError> {
        match self.args[0].to_ascii_lowercase().as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(self.err(format!(
                "invalid value \"{}\" in \"{}\" directive, it must be \"on\" or \"off\"",
                self.args[0], self.name
            ))),
        }
    }

    /// The children of a block directive (empty for a simple one).
    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or(&[])
    }
}

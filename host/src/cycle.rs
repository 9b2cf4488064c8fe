//! A configuration generation ("cycle", as nginx calls it): the parsed and
//! checked config plus the host settings read from it. The master loads one
//! at start and one per reload; a cycle that fails to load changes nothing.

use crate::config::core::{CoreConf, Prefix};
use crate::config::parser::{self, Parsed};
use crate::config::table::Registry;
use crate::config::Directive;
use std::path::PathBuf;

/// What the command line says about where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `-p`: prefix for relative paths (default: the working directory).
    pub prefix: PathBuf,
    /// `-c`: the main config file, resolved against the prefix.
    pub conf: PathBuf,
    /// `-e`: the error log used before the config is read.
    pub error_log: Option<PathBuf>,
    /// `-g`: extra main-context directives.
    pub directives: Option<String>,
}

/// One loaded configuration generation.
pub struct Cycle {
    /// The directive tree (main context).
    pub tree: Vec<Directive>,
    /// The host's settings.
    pub core: CoreConf,
    /// Every file read, for `-T`.
    pub files: Vec<(PathBuf, String)>,
}

impl Cycle {
    /// Parses, checks and reads the configuration named by `paths`.
    pub fn load(paths: &Paths) -> Result<Cycle, String> {
        let Parsed { root, files } =
            parser::parse_file(&paths.conf, paths.directives.as_deref()).map_err(|e| e.to_string())?;
        let registry = Registry::core();
        registry.check(&root).map_err(|e| e.to_string())?;
        let core = CoreConf::from_tree(&root, &Prefix(paths.prefix.clone())).map_err(|e| e.to_string())?;
        Ok(Cycle { tree: root, core, files })
    }

    /// Reads only the pid file path, for `-s`: a syntax-only parse that
    /// loads no plugins and checks no directives.
    pub fn pid_path(paths: &Paths) -> Result<PathBuf, String> {
        let Parsed { root, .. } =
            parser::parse_file(&paths.conf, paths.directives.as_deref()).map_err(|e| e.to_string())?;
        let prefix = Prefix(paths.prefix.clone());
        Ok(root
            .iter()
            .rev()
            .find(|d| d.name == "pid" && d.args.len() == 1)
            .map_or_else(|| prefix.resolve(crate::config::core::DEFAULT_PID), |d| prefix.resolve(&d.args[0])))
    }
}

//! A configuration generation ("cycle", as nginx calls it): the parsed and
//! checked config plus the host settings read from it. The master loads one
//! at start and one per reload; a cycle that fails to load changes nothing.

use crate::config::core::{CoreConf, Prefix};
use crate::config::parser::{self, Parsed};
use crate::config::table::Registry;
use crate::plugin::conf::Plugins;
use std::path::{Path, PathBuf};

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
    /// The host's settings.
    pub core: CoreConf,
    /// Every file read, for `-T`.
    pub files: Vec<(PathBuf, String)>,
    /// This generation's plugins and their configuration objects.
    pub plugins: Plugins,
    /// The HTTP servers and locations.
    pub http: crate::http::conf::HttpConf,
    /// Generation number for shared zones (see [`crate::shm`]).
    pub shm_gen: u64,
}

impl Cycle {
    /// Parses, checks and reads the configuration named by `paths`.
    pub fn load(paths: &Paths) -> Result<Cycle, String> {
        let Parsed { root, files } =
            parser::parse_file(&paths.conf, paths.directives.as_deref()).map_err(|e| e.to_string())?;
        let prefix = Prefix(paths.prefix.clone());
        let shm_gen = crate::shm::begin_generation();
        let mut registry = Registry::core();
        // load_module lines are honoured first, wherever they stand in the
        // main context, so a plugin's directives are known everywhere.
        let mut list: Vec<crate::plugin::Plugin> = Vec::new();
        for d in root.iter().filter(|d| d.name == "load_module") {
            if d.args.len() != 1 {
                return Err(d.err("invalid number of arguments in \"load_module\" directive").to_string());
            }
            let p = crate::plugin::load(&prefix.resolve(&d.args[0]), d).map_err(|e| e.to_string())?;
            if let Some(old) = list.iter().find(|o| o.name == p.name) {
                return Err(d
                    .err(format!(
                        "load_module \"{}\" failed: plugin \"{}\" is already loaded from \"{}\"",
                        p.path.display(),
                        p.name,
                        old.path.display()
                    ))
                    .to_string());
            }
            list.push(p);
            crate::plugin::register(&list, list.len() - 1, &mut registry, d).map_err(|e| e.to_string())?;
        }
        registry.check(&root).map_err(|e| e.to_string())?;
        let mut core = CoreConf::from_tree(&root, &prefix).map_err(|e| e.to_string())?;
        let conf_dir = paths.conf.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut plugins = Plugins::new(list, paths.prefix.clone());
        plugins.conf_dir.clone_from(&conf_dir);
        plugins.configure(&root, &registry).map_err(|e| e.to_string())?;
        let port = if crate::sys::is_root() { 80 } else { 8000 };
        let default_addr = std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
        let http = crate::http::conf::HttpConf::build(&plugins, &prefix, &conf_dir, default_addr).map_err(|e| e.to_string())?;
        for &(addr, pi, _, _) in &plugins.proto {
            if core.listens.iter().any(|l| l.addr == addr) {
                return Err(format!(
                    "plugin \"{}\" listens on {addr}, which the http configuration also uses",
                    plugins.list[pi].name
                ));
            }
            core.listens.push(crate::config::core::default_listen(addr));
        }
        plugins.init_cycle()?;
        for p in &plugins.list {
            crate::log!(Notice, "plugin \"{}\" loaded from \"{}\" (fnv1a {:016x})", p.name, p.path.display(), p.hash);
        }
        Ok(Cycle { core, files, plugins, http, shm_gen })
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

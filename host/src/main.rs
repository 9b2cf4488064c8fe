//! `ngxr`: the host binary. Command line as nginx's, flag for flag.
//!
//! `ngxr [-?hvVtTq] [-s signal] [-p prefix] [-e filename] [-c filename] [-g directives]`

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
pub mod cycle;
pub mod http;
pub mod log;
pub mod master;
pub mod plugin;
pub mod shm;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod worker;

use cycle::{Cycle, Paths};
use std::path::PathBuf;
use std::process::ExitCode;

/// Version of the host.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Plugin ABI version this host implements (major, minor): the header's.
pub const ABI_VERSION: (u32, u32) = (plugin_api::sys::ABI_MAJOR, plugin_api::sys::ABI_MINOR);

struct Cli {
    paths: Paths,
    test: bool,
    dump: bool,
    quiet: bool,
    signal: Option<String>,
    show: Option<char>,
}

const USAGE: &str = "Usage: ngxr [-?hvVtTq] [-s signal] [-p prefix]
             [-e filename] [-c filename] [-g directives]

Options:
  -?,-h         : this help
  -v            : show version and exit
  -V            : show version and configure options then exit
  -t            : test configuration and exit
  -T            : test configuration, dump it and exit
  -q            : suppress non-error messages during configuration testing
  -s signal     : send signal to a master process: stop, quit, reopen, reload
  -p prefix     : set prefix path (default: the current directory)
  -e filename   : set error log file (default: logs/error.log)
  -c filename   : set configuration file (default: conf/ngxr.conf)
  -g directives : set global directives out of configuration file
";

fn parse_cli() -> Result<Cli, String> {
    let mut args = std::env::args().skip(1);
    let mut prefix: Option<String> = None;
    let mut conf: Option<String> = None;
    let mut elog: Option<String> = None;
    let mut cli = Cli {
        paths: Paths { prefix: PathBuf::new(), conf: PathBuf::new(), error_log: None, directives: None },
        test: false,
        dump: false,
        quiet: false,
        signal: None,
        show: None,
    };
    while let Some(a) = args.next() {
        let Some(flags) = a.strip_prefix('-') else {
            return Err(format!("invalid option: \"{a}\""));
        };
        let mut chars = flags.chars();
        while let Some(c) = chars.next() {
            let rest: String = chars.clone().collect();
            let mut value = |name: &str| -> Result<String, String> {
                if !rest.is_empty() {
                    Ok(rest.clone())
                } else {
                    args.next().ok_or_else(|| format!("option \"-{name}\" requires {}", match name {
                        "s" => "signal name",
                        "p" => "directory name",
                        "g" => "parameter",
                        _ => "file name",
                    }))
                }
            };
            match c {
                '?' | 'h' | 'v' | 'V' => cli.show = Some(if c == '?' { 'h' } else { c }),
                't' => cli.test = true,
                'T' => {
                    cli.test = true;
                    cli.dump = true
                }
                'q' => cli.quiet = true,
                's' | 'p' | 'c' | 'e' | 'g' => {
                    let v = value(&c.to_string())?;
                    match c {
                        's' => {
                            if !["stop", "quit", "reopen", "reload"].contains(&v.as_str()) {
                                return Err(format!("invalid option: \"-s {v}\""));
                            }
                            cli.signal = Some(v)
                        }
                        'p' => prefix = Some(v),
                        'c' => conf = Some(v),
                        'e' => elog = Some(v),
                        _ => cli.paths.directives = Some(v),
                    }
                    break;
                }
                _ => return Err(format!("invalid option: \"{a}\"")),
            }
        }
    }
    let cwd = std::env::current_dir().map_err(|e| format!("getcwd() failed ({e})"))?;
    let prefix = match prefix {
        Some(p) => cwd.join(p),
        None => cwd,
    };
    let conf = prefix.join(conf.as_deref().unwrap_or("conf/ngxr.conf"));
    cli.paths.error_log = Some(match elog.as_deref() {
        Some("stderr") => PathBuf::new(),
        Some(e) => prefix.join(e),
        None => prefix.join(config::core::DEFAULT_ERROR_LOG),
    });
    cli.paths.prefix = prefix;
    cli.paths.conf = conf;
    Ok(cli)
}

fn version_text(full: bool) -> String {
    let mut s = format!("ngxr version: ngxr/{VERSION}\n");
    if full {
        s += &format!("plugin ABI: {}.{}\n", ABI_VERSION.0, ABI_VERSION.1);
        s += "plugin directory: modules (relative to the prefix)\n";
        s += "built with rustc for linux (epoll)\n";
        s += "configure arguments: --prefix=. --conf-path=conf/ngxr.conf \
              --error-log-path=logs/error.log --pid-path=logs/ngxr.pid --modules-path=modules\n";
    }
    s
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(e) => {
            eprint!("ngxr: {e}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    match cli.show {
        Some('h') => {
            eprint!("{}{USAGE}", version_text(false));
            return ExitCode::SUCCESS;
        }
        Some(c) => {
            eprint!("{}", version_text(c == 'V'));
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    // The startup log: -e file (or stderr) until the config names its own.
    let startup = cli.paths.error_log.clone().filter(|p| !p.as_os_str().is_empty());
    let _ = log::set_targets(&[config::core::LogTarget { path: startup, syslog: None, level: log::Level::Notice }]);

    if let Some(sig) = &cli.signal {
        return send_signal(&cli.paths, sig);
    }
    let conf_name = cli.paths.conf.display().to_string();
    if cli.test {
        return match Cycle::load(&cli.paths) {
            Ok(cycle) => {
                if !cli.quiet {
                    eprintln!("ngxr: the configuration file {conf_name} syntax is ok");
                    eprintln!("ngxr: configuration file {conf_name} test is successful");
                }
                if cli.dump {
                    for (path, text) in &cycle.files {
                        println!("# configuration file {}:", path.display());
                        println!("{text}");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ngxr: [emerg] {e}");
                eprintln!("ngxr: configuration file {conf_name} test failed");
                ExitCode::from(1)
            }
        };
    }
    match master::start(cli.paths) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ngxr: [emerg] {e}");
            log!(Emerg, "{e}");
            ExitCode::from(1)
        }
    }
}

fn send_signal(paths: &Paths, name: &str) -> ExitCode {
    let sig = match name {
        "stop" => libc::SIGTERM,
        "quit" => libc::SIGQUIT,
        "reopen" => libc::SIGUSR1,
        _ => libc::SIGHUP,
    };
    let pid_path = match Cycle::pid_path(paths) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ngxr: [emerg] {e}");
            return ExitCode::from(1);
        }
    };
    let text = match std::fs::read_to_string(&pid_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "ngxr: [error] open() \"{}\" failed ({})",
                pid_path.display(),
                config::parser::os_err(&e)
            );
            return ExitCode::from(1);
        }
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        eprintln!("ngxr: [error] invalid PID number \"{}\" in \"{}\"", text.trim(), pid_path.display());
        return ExitCode::from(1);
    };
    match sys::kill(pid, sig) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ngxr: [alert] kill({pid}, {sig}) failed ({})", config::parser::os_err(&e));
            ExitCode::from(1)
        }
    }
}

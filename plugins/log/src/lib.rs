//! `log`: the access log, as nginx's log module.
//!
//! - `log_format name [escape=default|json|none] string…;` (http)
//! - `access_log path [format [buffer=size] [flush=time] [if=condition]] | off;`
//!   (`if=`: the line is skipped when the condition is empty or "0")
//!   (http, server, location; several may be given; inherited as a whole)
//!
//! The predefined `combined` format is the default; without any
//! `access_log`, requests are logged to `logs/access.log` in `combined`.
//! Unset variables are written as `-`. Files are the host's (ABI 1.3
//! `conf_open_file`): opened (appending) while the configuration is read,
//! in the master, so workers that dropped privileges still write to them;
//! reopened on USR1 (`ngxr -s reopen`, log rotation) and by a reload.
//! `access_log syslog:server=…[,facility=][,severity=][,tag=][,nohostname]
//! [format]` sends each line as a syslog message instead
//! (`plugin_api::syslog`).

use plugin_api::{export_plugin, sys, template::Template, DirectiveSpec, Phase, Plugin, Request, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

const COMBINED: &str =
    "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Escape {
    Default,
    Json,
    None,
}

/// A compiled `log_format`.
#[derive(Clone, Debug)]
struct Format {
    t: Template,
    escape: Escape,
}

/// An open log file, shared by every `access_log` naming its path.
struct LogFile {
    path: String,
    file: plugin_api::LogFile,
    buf: RefCell<Vec<u8>>,
    cap: usize,
}

impl LogFile {
    fn write(&self, line: &[u8]) {
        let mut b = self.buf.borrow_mut();
        if self.cap == 0 {
            // A failure is logged by the host.
            self.file.write(line);
            return;
        }
        if b.len() + line.len() > self.cap {
            self.flush_buf(&mut b);
        }
        b.extend_from_slice(line);
    }

    fn flush_buf(&self, b: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        self.file.write(b);
        b.clear();
    }

    fn flush(&self) {
        self.flush_buf(&mut self.buf.borrow_mut());
    }
}

/// Where an `access_log` writes.
#[derive(Clone)]
enum Out {
    File(Rc<LogFile>),
    /// `syslog:…`: a message per line.
    Syslog(Rc<plugin_api::syslog::Syslog>),
}

/// One `access_log`.
#[derive(Clone)]
struct Target {
    file: Out,
    format: Rc<Format>,
    /// `if=`: the line is written unless this is empty or "0".
    cond: Option<Rc<Template>>,
}

/// Per-block configuration.
#[derive(Default, Clone)]
pub struct Conf {
    /// `log_format`s (http level; shared downwards).
    formats: Rc<RefCell<HashMap<String, Rc<Format>>>>,
    /// Targets; `Some(empty)` = `access_log off`.
    targets: Option<Vec<Target>>,
    /// The main-level object also remembers every file for exit flushes.
    files: Rc<RefCell<Vec<Rc<LogFile>>>>,
    /// The prefix-resolved default path (`logs/access.log`).
    default_path: Option<String>,
}

type Formats = Rc<RefCell<HashMap<String, Rc<Format>>>>;
type Files = Rc<RefCell<Vec<Rc<LogFile>>>>;

thread_local! {
    /// Formats and files of the generation being configured: one registry
    /// shared by all its blocks (log_format is http-wide in nginx). A new
    /// generation starts new ones; the old generation keeps its own.
    static GEN: RefCell<(Formats, Files)> = RefCell::new(Default::default());
}

/// The plugin.
pub struct Log;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

/// The generation's file for `path` (one per path, as nginx shares them).
fn open(cx: &plugin_api::ConfCx<'_>, path: &str, cap: usize) -> Result<Rc<LogFile>, String> {
    let files = GEN.with(|g| g.borrow().1.clone());
    if let Some(f) = files.borrow().iter().find(|f| f.path == path) {
        return Ok(f.clone());
    }
    let file = cx.open_file(path)?;
    let f = Rc::new(LogFile { path: path.to_string(), file, buf: RefCell::new(Vec::with_capacity(cap)), cap });
    files.borrow_mut().push(f.clone());
    Ok(f)
}

fn combined() -> Rc<Format> {
    Rc::new(Format { t: Template::parse(COMBINED), escape: Escape::Default })
}

impl Plugin for Log {
    const NAME: &'static str = "log";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("log_format", sys::CTX_HTTP, 2, sys::ARGS_ANY, |c, a, _| {
                let name = a[0];
                let mut rest = &a[1..];
                let mut escape = Escape::Default;
                if let Some(e) = rest.first().and_then(|s| s.strip_prefix("escape=")) {
                    escape = match e {
                        "default" => Escape::Default,
                        "json" => Escape::Json,
                        "none" => Escape::None,
                        v => return Err(format!("unknown log format escaping \"{v}\"")),
                    };
                    rest = &rest[1..];
                }
                if rest.is_empty() {
                    return Err("invalid number of arguments in \"log_format\" directive".into());
                }
                let mut fm = c.formats.borrow_mut();
                if fm.contains_key(name) || name == "combined" {
                    return Err(format!("duplicate \"log_format\" name \"{name}\""));
                }
                fm.insert(name.to_string(), Rc::new(Format { t: Template::parse(&rest.concat()), escape }));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("access_log", H | sys::CTX_IF, 1, sys::ARGS_ANY, |c, a, cx| {
                if a[0] == "off" {
                    if a.len() > 1 {
                        return Err("invalid parameter \"".to_string() + a[1] + "\"");
                    }
                    c.targets = Some(Vec::new());
                    return Ok(());
                }
                let format = match a.get(1).filter(|f| !f.contains('=')) {
                    None | Some(&"combined") => combined(),
                    Some(name) => c
                        .formats
                        .borrow()
                        .get(*name)
                        .cloned()
                        .ok_or_else(|| format!("unknown log format \"{name}\""))?,
                };
                let (mut cap, mut cond) = (0, None);
                for p in a.iter().skip(1).filter(|p| p.contains('=')) {
                    match p.split_once('=') {
                        Some(("buffer", v)) => cap = cx.size(v)? as usize,
                        Some(("flush", v)) => {
                            cx.time_ms(v)?;
                        }
                        Some(("if", v)) if !v.is_empty() => cond = Some(Rc::new(Template::parse(v))),
                        Some(("gzip", _)) => return Err(format!("\"{p}\" is not supported by ngxr yet")),
                        _ => return Err(format!("invalid parameter \"{p}\"")),
                    }
                }
                let file = match a[0].strip_prefix("syslog:") {
                    Some(spec) => Out::Syslog(Rc::new(plugin_api::syslog::Syslog::open(spec)?)),
                    None => Out::File(open(cx, &cx.full_path(a[0]), cap)?),
                };
                c.targets.get_or_insert_with(Vec::new).push(Target { file, format, cond });
                Ok(())
            }),
        ]
    }

    fn create(cx: &plugin_api::ConfCx<'_>, level: u32) -> Conf {
        if level == sys::CTX_MAIN {
            GEN.with(|g| *g.borrow_mut() = Default::default());
        }
        let (formats, files) = GEN.with(|g| g.borrow().clone());
        Conf { formats, targets: None, files, default_path: (level == sys::CTX_HTTP).then(|| cx.full_path("logs/access.log")) }
    }

    fn merge_in(cx: &plugin_api::ConfCx<'_>, _level: u32, parent: &Conf, child: &mut Conf) -> Result<(), String> {
        if child.targets.is_some() {
            return Ok(());
        }
        if parent.targets.is_some() {
            child.targets = parent.targets.clone();
            return Ok(());
        }
        // No access_log above: nginx's default, logs/access.log combined
        // (a file that cannot be opened refuses the configuration, as in
        // nginx).
        if let Some(path) = &parent.default_path {
            child.targets = Some(vec![Target { file: Out::File(open(cx, path, 0)?), format: combined(), cond: None }]);
        }
        Ok(())
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Log]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(targets) = conf.targets.as_ref().filter(|t| !t.is_empty()) else { return Status::Ok };
        // One line buffer per worker, reused.
        thread_local!(static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
        LINE.with(|l| {
            let Ok(mut line) = l.try_borrow_mut() else { return };
            for t in targets {
                line.clear();
                if let Some(c) = &t.cond {
                    // As nginx: skipped when the condition is "" or "0".
                    c.render(&mut line, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
                    if line.is_empty() || line.as_slice() == b"0" {
                        continue;
                    }
                    line.clear();
                }
                render(req, &t.format, &mut line);
                match &t.file {
                    Out::File(f) => {
                        line.push(b'\n');
                        f.write(&line);
                    }
                    Out::Syslog(s) => s.send(s.severity, &line),
                }
            }
        });
        Status::Ok
    }

    fn exit_worker(main: &Conf) {
        for f in main.files.borrow().iter() {
            f.flush();
        }
    }
}

fn render(req: &Request<'_>, f: &Format, out: &mut Vec<u8>) {
    // Unset variables log as "-" (nothing with escape=json or none), as
    // nginx's.
    f.t.render(out, |name, out| match req.var_bytes(name) {
        Some(v) => escape(v, f.escape, out),
        None if matches!(f.escape, Escape::Json | Escape::None) => {}
        None => out.push(b'-'),
    });
}

fn escape(v: &[u8], mode: Escape, out: &mut Vec<u8>) {
    for &b in v {
        match mode {
            Escape::None => out.push(b),
            Escape::Default => {
                if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                    out.extend_from_slice(format!("\\x{b:02X}").as_bytes());
                } else {
                    out.push(b);
                }
            }
            Escape::Json => match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b if b < 0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                b => out.push(b),
            },
        }
    }
}

export_plugin!(Log);

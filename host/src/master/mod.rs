//! The master process: owns the configuration generation and the
//! listening sockets, forks and supervises workers, and turns signals into
//! reloads, upgrades and stops. It never serves a connection itself.
//!
//! Signals are blocked and taken synchronously with `sigtimedwait`, so the
//! master has no async signal handlers and no threads (it forks).

pub mod listen;

use crate::config::core::{CoreConf, LogTarget};
use crate::cycle::{Cycle, Paths};
use crate::log::Level;
use crate::sys::{self, Exit, Fork};
use listen::{Bound, Pool};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Proc {
    pid: i32,
    gen: u64,
    slot: usize,
    /// Its counters' slot (crate::stats), or usize::MAX for none.
    stat: usize,
    retiring: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Graceful,
    Fast { kill_at: Instant },
}

struct Master {
    paths: Paths,
    cycle: Cycle,
    bound: Vec<Bound>,
    gen: u64,
    procs: Vec<Proc>,
    /// Slots waiting to be respawned, with the time they are due.
    respawn: Vec<(usize, Instant)>,
    /// Per slot: recent crash count and the time of the last crash.
    crashes: Vec<(u32, Instant)>,
    new_binary: Option<i32>,
    stop: Option<Stop>,
    retired: bool,
    /// The pid file this master owns (renamed to `.oldbin` on upgrade).
    pid_file: PathBuf,
}

/// Applies the config's `error_log` (or the default) to this process.
pub fn set_logs(core: &CoreConf, paths: &Paths) -> Result<(), String> {
    if core.error_logs.is_empty() {
        let path = paths.error_log.clone().filter(|p| !p.as_os_str().is_empty());
        crate::log::set_targets(&[LogTarget { path, syslog: None, level: Level::Error }])
    } else {
        crate::log::set_targets(&core.error_logs)
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

fn write_pid(path: &Path) -> Result<(), String> {
    std::fs::write(path, format!("{}\n", sys::pid()))
        .map_err(|e| format!("open() \"{}\" failed ({})", path.display(), crate::config::parser::os_err(&e)))
}

/// Runs ngxr: loads the config, opens listeners, then either becomes the
/// master (default) or serves in this single process (`master_process off`).
pub fn start(paths: Paths) -> Result<(), String> {
    sys::mask(&sys::HANDLED, true).map_err(|e| format!("sigprocmask() failed ({e})"))?;
    sys::ignore(libc::SIGPIPE, true);
    let cycle = Cycle::load(&paths)?;
    set_logs(&cycle.core, &paths)?;
    let inherited = std::env::var_os(listen::INHERIT_ENV).is_some();
    let mut pool = Pool::inherited();
    let slots = cycle.core.worker_processes;
    let bound = pool.open(&cycle.core.listens, slots)?;
    pool.close_rest();
    if cycle.core.daemon && !inherited {
        daemonize()?;
    }
    let pid_file = cycle.core.pid.clone();
    write_pid(&pid_file)?;
    crate::stats::init()?;
    if !cycle.core.master_process {
        crate::stats::claim(0);
        crate::log!(Notice, "ngxr/{} running in a single process", crate::VERSION);
        let code = crate::worker::run(&cycle, &bound, 0, true, sys::pid());
        remove_pid(&pid_file);
        return if code == 0 { Ok(()) } else { Err("worker failed".into()) };
    }
    sys::set_name("ngxr: master");
    crate::log!(Notice, "ngxr/{} master process started", crate::VERSION);
    let mut m = Master {
        paths,
        cycle,
        bound,
        gen: 1,
        procs: Vec::new(),
        respawn: Vec::new(),
        crashes: Vec::new(),
        new_binary: None,
        stop: None,
        retired: false,
        pid_file,
    };
    m.start_workers();
    m.run();
    Ok(())
}

fn daemonize() -> Result<(), String> {
    match sys::fork().map_err(|e| format!("fork() failed ({e})"))? {
        Fork::Parent(_) => std::process::exit(0),
        Fork::Child => {}
    }
    sys::setsid().map_err(|e| format!("setsid() failed ({e})"))?;
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open(\"/dev/null\") failed ({e})"))?;
    let _ = sys::dup2(null.as_raw_fd(), 0);
    let _ = sys::dup2(null.as_raw_fd(), 1);
    // stderr goes to the error log, so panics and stray output are kept.
    let err = crate::log::first_file()
        .and_then(|p| std::fs::OpenOptions::new().append(true).open(p).ok());
    let _ = sys::dup2(err.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd()), 2);
    Ok(())
}

fn remove_pid(path: &Path) {
    // Only remove a pid file that still names this process.
    if let Ok(t) = std::fs::read_to_string(path) {
        if t.trim() == sys::pid().to_string() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Master {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            let mut wait = Duration::from_millis(1000);
            for &(_, due) in &self.respawn {
                wait = wait.min(due.saturating_duration_since(now));
            }
            if let Some(sig) = sys::sigtimedwait(&sys::HANDLED, wait.as_millis() as u64) {
                self.on_signal(sig);
            }
            self.tick();
            if self.stop.is_some() && self.procs.is_empty() {
                crate::log!(Notice, "exit");
                remove_pid(&self.pid_file);
                return;
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        if sig != libc::SIGCHLD {
            crate::log!(Notice, "signal {sig} ({}) received", signal_name(sig));
        }
        match sig {
            libc::SIGCHLD => self.reap(),
            libc::SIGQUIT if self.stop.is_none() => {
                crate::log!(Notice, "gracefully shutting down");
                self.stop = Some(Stop::Graceful);
                self.respawn.clear();
                self.signal_workers(libc::SIGQUIT, |_| true);
            }
            libc::SIGTERM | libc::SIGINT if !matches!(self.stop, Some(Stop::Fast { .. })) => {
                crate::log!(Notice, "exiting");
                self.stop = Some(Stop::Fast { kill_at: Instant::now() + Duration::from_secs(3) });
                self.respawn.clear();
                self.signal_workers(libc::SIGTERM, |_| true);
            }
            libc::SIGHUP if self.stop.is_none() => {
                if self.retired && self.new_binary.is_some() {
                    crate::log!(Notice, "starting worker processes of the running configuration");
                    self.retired = false;
                    self.start_workers();
                } else {
                    self.reload();
                }
            }
            libc::SIGUSR1 => {
                crate::log!(Notice, "reopening logs");
                let owner = if crate::sys::is_root() { crate::worker::worker_user(&self.cycle.core).ok() } else { None };
                crate::worker::reopen_files(owner);
                crate::log!(Notice, "logs reopened");
                self.signal_workers(libc::SIGUSR1, |p| !p.retiring);
            }
            libc::SIGUSR2 if self.stop.is_none() => self.upgrade(),
            libc::SIGWINCH if self.stop.is_none() => {
                crate::log!(Notice, "gracefully shutting down worker processes");
                self.retired = true;
                self.respawn.clear();
                self.signal_workers(libc::SIGQUIT, |_| true);
                for p in &mut self.procs {
                    p.retiring = true;
                }
            }
            _ => {}
        }
    }

    fn signal_workers(&self, sig: i32, which: impl Fn(&Proc) -> bool) {
        for p in self.procs.iter().filter(|p| which(p)) {
            if let Err(e) = sys::kill(p.pid, sig) {
                crate::log!(Alert, "kill({}, {sig}) failed ({e})", p.pid);
            }
        }
    }

    /// Starts the generation's processes: slots 0..n are workers, the
    /// slots after them the plugins' helper processes.
    fn start_workers(&mut self) {
        let n = self.cycle.core.worker_processes + self.cycle.plugins.helpers.len();
        self.crashes = vec![(0, Instant::now()); n];
        for slot in 0..n {
            self.spawn(slot);
        }
    }

    fn spawn(&mut self, slot: usize) {
        let master = sys::pid();
        let workers = self.cycle.core.worker_processes;
        // A worker counts into a slot no live process holds.
        let stat = if slot < workers {
            (0..crate::stats::SLOTS).find(|i| !self.procs.iter().any(|p| p.stat == *i)).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        match sys::fork() {
            Err(e) => crate::log!(Alert, "fork() failed while spawning \"worker process\" ({e})"),
            Ok(Fork::Child) => {
                let code = if slot < workers {
                    crate::stats::claim(stat);
                    crate::worker::run(&self.cycle, &self.bound, slot, false, master)
                } else {
                    crate::worker::run_helper(&self.cycle, slot - workers, master)
                };
                std::process::exit(code);
            }
            Ok(Fork::Parent(pid)) => {
                let kind = if slot < workers { "worker" } else { "helper" };
                crate::log!(Notice, "start {kind} process {pid}");
                self.procs.push(Proc { pid, gen: self.gen, slot, stat, retiring: false });
            }
        }
    }

    fn reap(&mut self) {
        for (pid, how) in sys::reap() {
            if Some(pid) == self.new_binary {
                self.new_binary = None;
                crate::log!(Alert, "new binary process {pid} exited ({how:?})");
                self.restore_pid_file();
                continue;
            }
            let Some(i) = self.procs.iter().position(|p| p.pid == pid) else { continue };
            let p = self.procs.remove(i);
            crate::stats::release(p.stat);
            let abnormal = how != Exit::Code(0);
            match how {
                Exit::Code(c) if c != 0 => crate::log!(Alert, "worker process {pid} exited with code {c}"),
                Exit::Code(_) => crate::log!(Notice, "worker process {pid} exited with code 0"),
                Exit::Signal(s) => crate::log!(Alert, "worker process {pid} exited on signal {s}"),
            }
            if how == Exit::Code(2) {
                crate::log!(Alert, "worker process {pid} exited with fatal code 2 and cannot be respawned");
                continue;
            }
            let current = p.gen == self.gen && !p.retiring && !self.retired;
            if abnormal && current && self.stop.is_none() {
                self.schedule_respawn(p.slot);
            }
        }
    }

    /// Respawns at once after an isolated crash; repeated crashes of the
    /// same slot back off exponentially (100 ms … 10 s) so a crash loop
    /// does not spin the machine.
    fn schedule_respawn(&mut self, slot: usize) {
        let now = Instant::now();
        let Some((count, last)) = self.crashes.get_mut(slot) else { return };
        if now.duration_since(*last) > Duration::from_secs(30) {
            *count = 0;
        }
        *count += 1;
        *last = now;
        let delay = if *count <= 1 {
            Duration::ZERO
        } else {
            Duration::from_millis(100u64 << (*count - 2).min(7)).min(Duration::from_secs(10))
        };
        if !delay.is_zero() {
            crate::log!(Alert, "worker slot {slot} is crashing repeatedly, respawning in {}ms", delay.as_millis());
        }
        self.respawn.push((slot, now + delay));
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> =
            self.respawn.iter().filter(|(_, t)| *t <= now).map(|(s, _)| *s).collect();
        self.respawn.retain(|(_, t)| *t > now);
        for slot in due {
            if self.stop.is_none() && !self.retired {
                self.spawn(slot);
            }
        }
        if let Some(Stop::Fast { kill_at }) = self.stop {
            if now >= kill_at && !self.procs.is_empty() {
                crate::log!(Alert, "worker processes did not exit in time, sending SIGKILL");
                self.signal_workers(libc::SIGKILL, |_| true);
                self.stop = Some(Stop::Fast { kill_at: now + Duration::from_secs(3600) });
            }
        }
    }

    fn reload(&mut self) {
        crate::log!(Notice, "reconfiguring");
        let cycle = match Cycle::load(&self.paths) {
            Ok(c) => c,
            Err(e) => {
                crate::log!(Emerg, "{e}");
                crate::log!(Alert, "reload failed, the running configuration is kept");
                return;
            }
        };
        if let Err(e) = set_logs(&cycle.core, &self.paths) {
            crate::log!(Emerg, "{e}");
            crate::log!(Alert, "reload failed, the running configuration is kept");
            return;
        }
        let slots = cycle.core.worker_processes;
        let mut pool = Pool::from_bound(std::mem::take(&mut self.bound));
        match pool.open(&cycle.core.listens, slots) {
            Ok(bound) => {
                pool.close_rest();
                self.bound = bound;
            }
            Err(e) => {
                crate::log!(Emerg, "{e}");
                crate::log!(Alert, "reload failed, the running configuration is kept");
                let old = &self.cycle.core;
                self.bound = pool.open(&old.listens, old.worker_processes).unwrap_or_default();
                let _ = set_logs(old, &self.paths);
                return;
            }
        }
        if cycle.core.pid != self.pid_file && self.new_binary.is_none() {
            match write_pid(&cycle.core.pid) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.pid_file);
                    self.pid_file = cycle.core.pid.clone();
                }
                Err(e) => crate::log!(Alert, "{e}"),
            }
        }
        crate::shm::retain_generation(cycle.shm_gen);
        self.cycle = cycle;
        self.gen += 1;
        self.retired = false;
        self.respawn.clear();
        for p in &mut self.procs {
            p.retiring = true;
        }
        self.start_workers();
        let gen = self.gen;
        self.signal_workers(libc::SIGQUIT, |p| p.gen != gen);
    }

    fn oldbin(&self) -> PathBuf {
        let mut s = self.cycle.core.pid.clone().into_os_string();
        s.push(".oldbin");
        PathBuf::from(s)
    }

    /// USR2: start the (possibly replaced) binary with our listeners.
    fn upgrade(&mut self) {
        if self.new_binary.is_some() {
            crate::log!(Alert, "the changing binary signal is ignored: you should shutdown or terminate before either old or new binary's process");
            return;
        }
        let oldbin = self.oldbin();
        if let Err(e) = std::fs::rename(&self.pid_file, &oldbin) {
            crate::log!(Alert, "rename() {} to {} failed ({e})", self.pid_file.display(), oldbin.display());
            return;
        }
        self.pid_file = oldbin;
        let exe = executable();
        let fds = listen::export(&self.bound);
        let spawned = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(listen::INHERIT_ENV, &fds)
            .spawn();
        listen::unexport(&self.bound);
        match spawned {
            Ok(child) => {
                crate::log!(Notice, "start new binary process {}", child.id());
                self.new_binary = Some(child.id() as i32);
            }
            Err(e) => {
                crate::log!(Alert, "execve() failed while executing new binary process \"{}\" ({e})", exe.display());
                self.restore_pid_file();
            }
        }
    }

    fn restore_pid_file(&mut self) {
        let real = self.cycle.core.pid.clone();
        if self.pid_file != real && std::fs::rename(&self.pid_file, &real).is_ok() {
            self.pid_file = real;
        }
    }
}

/// The binary to execute on upgrade: argv[0] as started (so a binary
/// installed over the old path is picked up), else /proc/self/exe.
fn executable() -> PathBuf {
    let argv0 = std::env::args_os().next().map(PathBuf::from).unwrap_or_default();
    if argv0.components().count() > 1 {
        return argv0;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(&argv0);
            if p.is_file() {
                return p;
            }
        }
    }
    std::env::current_exe().unwrap_or(argv0)
}

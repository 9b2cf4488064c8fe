//! Thin, safe wrappers over the POSIX calls the host needs: processes,
//! signals, credentials, limits, time. All `unsafe` of the process layer
//! lives here; each block states the invariant it relies on.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// This process's pid.
pub fn pid() -> i32 {
    std::process::id() as i32
}

/// Result of [`fork`].
pub enum Fork {
    /// In the parent; the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Forks the process.
///
/// The host calls this only from its single-threaded master (or before any
/// thread exists), so the child inherits a consistent heap and no locks held
/// by other threads.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the master never starts threads (DESIGN.md, loader fact 6), so
    // the child is a faithful copy with no lock held by a vanished thread.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// Starts a new session (daemon mode).
pub fn setsid() -> io::Result<()> {
    // SAFETY: no pointers; failure is reported through the return value.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// `dup2(from, to)`.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the fd table; invalid fds yield EBADF.
    cvt(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Sets or clears FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd; EBADF is reported, nothing is dereferenced.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) }).map(drop)
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (core dumped or not).
    Signal(i32),
}

/// Reaps every exited child without blocking.
pub fn reap() -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer for the duration of the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return out;
        }
        let how = if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        };
        out.push((pid, how));
    }
}

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset with valid
    // signal numbers cannot fail.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The signals the master and workers handle synchronously.
pub const HANDLED: [i32; 9] = [
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
    libc::SIGALRM,
];

/// Blocks (or unblocks) `sigs` for this thread; blocked signals are then
/// taken with [`sigtimedwait`] or a signalfd, never by async handlers.
pub fn mask(sigs: &[i32], block: bool) -> io::Result<()> {
    let set = sigset(sigs);
    let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: set is initialised; the old-set pointer may be null.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Sets the disposition of `sig` to ignore (`true`) or default (`false`).
pub fn ignore(sig: i32, on: bool) {
    let h = if on { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN/SIG_DFL are valid dispositions for any catchable signal.
    unsafe {
        libc::signal(sig, h);
    }
}

/// Waits up to `timeout_ms` for one of `sigs` (which must be blocked).
pub fn sigtimedwait(sigs: &[i32], timeout_ms: u64) -> Option<i32> {
    let set = sigset(sigs);
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: set and ts are initialised and outlive the call; info may be null.
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

/// A signalfd reading `sigs` (which must be blocked), nonblocking.
pub fn signalfd(sigs: &[i32]) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let set = sigset(sigs);
    // SAFETY: set is initialised; -1 asks for a new fd.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd returned a fresh fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Reads pending signal numbers from a signalfd.
pub fn read_signalfd(fd: RawFd) -> Vec<i32> {
    let mut out = Vec::new();
    loop {
        // SAFETY: an all-zero signalfd_siginfo is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let sz = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is a writable buffer of exactly sz bytes.
        let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), sz) };
        if n != sz as isize {
            return out;
        }
        out.push(info.ssi_signo as i32);
    }
}

/// Looks up a user's uid and primary gid, and a group's gid.
pub fn lookup_user(user: &str, group: Option<&str>) -> io::Result<(u32, u32)> {
    let cu = CString::new(user).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: getpwnam returns a pointer to static storage valid until the
    // next call; we copy the two integers out at once (single-threaded).
    let pw = unsafe { libc::getpwnam(cu.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("getpwnam(\"{user}\") failed")));
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    let (uid, mut gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    if let Some(g) = group {
        let cg = CString::new(g).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: as for getpwnam.
        let gr = unsafe { libc::getgrnam(cg.as_ptr()) };
        if gr.is_null() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("getgrnam(\"{g}\") failed")));
        }
        // SAFETY: gr is non-null and points to a valid group entry.
        gid = unsafe { (*gr).gr_gid };
    }
    Ok((uid, gid))
}

/// Drops to `uid`/`gid` (group first, supplementary groups cleared).
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; errors are returned.
    unsafe {
        cvt(libc::setgid(gid))?;
        cvt(libc::setgroups(0, std::ptr::null()))?;
        cvt(libc::setuid(uid))?;
    }
    Ok(())
}

/// `chown(path, uid, gid)`.
pub fn chown(path: &std::path::Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

/// Sets RLIMIT_NOFILE (soft and hard) to `n`.
pub fn set_nofile(n: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
    // SAFETY: lim is initialised and outlives the call.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }).map(drop)
}

/// Sets this process's nice value.
pub fn set_priority(prio: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, prio) }).map(drop)
}

/// Binds this process to the CPUs in `mask` (bit i = CPU i).
pub fn set_affinity(mask: u64) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds
    // for i < 64 < CPU_SETSIZE; the set outlives the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for i in 0..64 {
            if mask & (1 << i) != 0 {
                libc::CPU_SET(i, &mut set);
            }
        }
        cvt(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)).map(drop)
    }
}

/// Local time broken down: (year, month 1-12, day, hour, min, sec, gmtoff secs).
pub fn localtime(secs: i64) -> (i32, u32, u32, u32, u32, u32, i64) {
    // SAFETY: a zeroed tm is valid; localtime_r writes only into it.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let t = secs as libc::time_t;
        libc::localtime_r(&t, &mut tm);
        (
            tm.tm_year + 1900,
            (tm.tm_mon + 1) as u32,
            tm.tm_mday as u32,
            tm.tm_hour as u32,
            tm.tm_min as u32,
            tm.tm_sec as u32,
            tm.tm_gmtoff,
        )
    }
}

/// Sets the process umask (daemon start).
pub fn umask(m: u32) {
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(m as libc::mode_t);
    }
}

/// Sets TCP_DEFER_ACCEPT (seconds) on a listening socket.
pub fn set_defer_accept(fd: RawFd, secs: i32) -> io::Result<()> {
    // SAFETY: the value pointer and size describe a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Names this process in `ps -o comm` / `/proc/PID/comm` (15 bytes max).
pub fn set_name(name: &str) {
    let c = CString::new(&name.as_bytes()[..name.len().min(15)]).unwrap_or_default();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c.as_ptr());
    }
}

/// Takes ownership of an inherited socket fd (binary upgrade).
///
/// The caller must be the only owner of `fd`: here, a number the parent
/// master passed in `NGXR_INHERIT` that nothing else in this process opened.
pub fn adopt_socket(fd: RawFd) -> Option<socket2::Socket> {
    use std::os::fd::FromRawFd;
    // Refuse numbers that are not open sockets rather than adopting garbage.
    // SAFETY: fstat writes into a zeroed stat buffer; a bad fd gives EBADF.
    let is_sock = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    // SAFETY: fd is an open socket handed to this process for it to own.
    is_sock.then(|| unsafe { socket2::Socket::from_raw_fd(fd) })
}

/// Asks the kernel to send `sig` to this process when its parent dies, and
/// returns false if the parent `expected_parent` is already gone.
/// Must be called after any credential change (setuid clears it).
pub fn parent_death_signal(sig: i32, expected_parent: i32) -> bool {
    // SAFETY: PR_SET_PDEATHSIG takes an integer signal; getppid cannot fail.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong);
        libc::getppid() == expected_parent
    }
}

/// sendfile(2) from `file` at `*offset` to the socket `out`: bytes sent
/// (`*offset` advanced), or the error (WouldBlock when the socket is full).
pub fn sendfile(out: RawFd, file: RawFd, offset: &mut u64, count: usize) -> io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: both fds are open for the call; off is a valid in/out pointer.
    let n = unsafe { libc::sendfile(out, file, &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// recv(2) of up to `max` bytes appended to `buf` (its spare capacity is
/// reserved here): no zeroing of the buffer first. Ok(0) at EOF.
pub fn recv_into(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let len = buf.len();
    loop {
        let spare = buf.spare_capacity_mut();
        // SAFETY: recv writes at most `max` bytes into the reserved spare
        // capacity (at least `max` long); fd is open for the call.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), max, 0) };
        if n >= 0 {
            // SAFETY: the kernel initialised n bytes after len.
            unsafe { buf.set_len(len + n as usize) };
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// pread(2): reads at `offset` without moving the file position.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: buf is writable for its length; fd is open for the call.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// dup(2) with close-on-exec.
pub fn dup_fd(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on a caller-provided descriptor; a new fd is
    // returned (owned from here on) or -1.
    let n = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: n is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// send(2) with MSG_MORE: the kernel holds a partial segment back until
/// more data, close(2) or shutdown(2). For a connection's last response,
/// so the close that follows sends it and the FIN in one segment.
pub fn send_more(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads buf.len() bytes from a live slice.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL | libc::MSG_MORE) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether the socket has unread input (recv with MSG_PEEK): closing it
/// now would answer with a reset, and a reset can cost the client the
/// response it has not read yet.
pub fn has_input(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: recv writes at most one byte into `b`.
    unsafe { libc::recv(fd, (&mut b as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) > 0 }
}

/// shutdown(SHUT_WR) for lingering close.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown on an open socket has no memory effects.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// TCP_CORK on or off (`tcp_nopush`): while on, the kernel sends only
/// full segments, so a response head and its file go out together.
pub fn set_cork(fd: RawFd, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: setsockopt reads an int we pass by pointer for the call.
    unsafe {
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CORK, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
}

/// 128 random bits from the kernel (getrandom); a time-based value if it
/// fails (never for a Linux of this century).
pub fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 16 {
        return u128::from_ne_bytes(b);
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()) ^ u128::from(std::process::id()) << 64
}

//! The benchmark's ceiling: one thread, one mio loop, httparse, and a
//! fixed 13-byte reply to every request — no files, no configuration, no
//! logging. What a web server could reach on this machine if it did
//! nothing else; `bench/run` prints it beside ngxr and nginx, and uses it
//! as the upstream for the proxy scenario (a backend that costs little).
//!
//! Usage: `bench-ceiling 127.0.0.1:PORT`

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nServer: ceiling\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n";
const REPLY_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: ceiling\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\nHello, world\n";
const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    inb: Vec<u8>,
    out: Vec<u8>,
    close: bool,
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8099".into());
    let mut listener = TcpListener::bind(addr.parse().expect("address")).expect("bind");
    let mut poll = Poll::new().expect("poll");
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).expect("register");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut sock, _)) = listener.accept() {
                    let _ = sock.set_nodelay(true);
                    let i = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    if poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE).is_ok() {
                        conns[i] = Some(Conn { sock, inb: Vec::with_capacity(4096), out: Vec::with_capacity(4096), close: false });
                    } else {
                        free.push(i);
                    }
                }
                continue;
            }
            let i = ev.token().0;
            let done = match conns.get_mut(i).and_then(Option::as_mut) {
                Some(c) => serve(c),
                None => false,
            };
            if done {
                if let Some(mut c) = conns[i].take() {
                    let _ = poll.registry().deregister(&mut c.sock);
                }
                free.push(i);
            }
        }
    }
}

/// Reads what is there, answers every complete request, writes; true when
/// the connection is finished.
fn serve(c: &mut Conn) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => c.inb.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    while !c.close {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&c.inb) {
            Ok(httparse::Status::Complete(n)) => {
                let close = req.version == Some(0)
                    || req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"));
                c.out.extend_from_slice(if close { REPLY_CLOSE } else { REPLY });
                c.close = close;
                c.inb.drain(..n);
            }
            Ok(httparse::Status::Partial) => break,
            Err(_) => return true,
        }
    }
    while !c.out.is_empty() {
        match c.sock.write(&c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    c.close
}

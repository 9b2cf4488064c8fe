//! The map plugin through the real binary (values read with `return`).

use ngxr_tests::*;

#[test]
fn map_values_as_nginx() {
    let port = free_port();
    let p = Prefix::new();
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ access_log off;
            map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
            map $http_x_host $site {{
                hostnames;
                default none;
                example.com exact;
                *.example.com wild;
                .example.org dotted;
                mail.* mailish;
                ~^(?<name>[a-z]+)\\.test$ \"re:$1:$name\";
                ~*^UP\\. upper;
                \\~tilde literal;
            }}
            map \"$arg_a:$arg_b\" $pair {{ 1:2 one-two; default \"other($arg_a)\"; }}
            map $uri $first_uri {{ default $uri; }}
            map $uri $this_uri {{ volatile; default $uri; }}
            server {{ listen 127.0.0.1:{port};
                location / {{ return 200 \"$connection_upgrade|$site|$pair|$name\"; }}
                location /from {{ set $seen \"$first_uri $this_uri\"; rewrite ^ /to last; }}
                location /to {{ return 200 \"$seen, then $first_uri $this_uri\"; }}
            }} }}\n",
        conf_head(),
        load_plugins(&["rewrite", "map", "log"]),
    ));
    let s = Server::start_in(p, port);
    let get_h = |path: &str, headers: &str| {
        let buf = raw(s.port, format!("GET {path} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n").as_bytes()).unwrap();
        let r = parse_response(&buf).unwrap().0;
        String::from_utf8(r.body).unwrap()
    };
    let site = |host: &str| get_h("/", &format!("X-Host: {host}\r\n")).split('|').nth(1).unwrap().to_string();
    // The websocket idiom: "" maps to close, anything else to upgrade.
    assert!(get_h("/", "").starts_with("close|"));
    assert!(get_h("/", "Upgrade: websocket\r\n").starts_with("upgrade|"));
    // Priority: exact, longest prefix mask, suffix mask, regex, default.
    assert_eq!(site("Example.COM"), "exact", "strings match without regard to case");
    assert_eq!(site("www.example.com"), "wild");
    assert_eq!(site("example.org"), "dotted", "a .name mask matches the bare name");
    assert_eq!(site("a.b.example.org"), "dotted");
    assert_eq!(site("mail.example.net"), "mailish");
    assert_eq!(site("abc.test"), "re:abc:abc");
    assert_eq!(site("up.x"), "upper", "~* is caseless");
    assert_eq!(site("~tilde"), "literal");
    assert_eq!(site("nowhere.net"), "none");
    // Named captures become variables; a composite source.
    assert!(get_h("/", "X-Host: zz.test\r\n").ends_with("|zz"));
    assert_eq!(get_h("/?a=1&b=2", "").split('|').nth(2), Some("one-two"));
    assert_eq!(get_h("/?a=7", "").split('|').nth(2), Some("other(7)"));
    // A value is kept for the rest of the request (a new location search
    // included), unless the map is volatile.
    assert_eq!(get_h("/from", ""), "/from /from, then /from /to");
}

//! Keeps `include/ngx_plugin.h` and `plugin_api::sys` identical, and the
//! tables append-only.
//!
//! 1. The header's structs are parsed (field names in order); a C probe
//!    compiled against the header prints sizeof and every offsetof; the
//!    Rust mirror's `size_of`/`offset_of!` must match exactly.
//! 2. `include/ngx_plugin.abi.toml` lists every slot in order with the
//!    minor that added it; the header must list the same slots in the same
//!    order (removing, reordering or renaming a slot fails here).
//! 3. The header compiles as C99 and C++ with -Wall -Wextra -pedantic -Werror.

use plugin_api::sys;
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn header() -> String {
    std::fs::read_to_string(root().join("include/ngx_plugin.h")).unwrap()
}

fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 2..];
        rest = &rest[rest.find("*/").map_or(rest.len(), |j| j + 2)..];
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// (C type name, fields in order) for every `typedef struct X_s {…} X_t;`.
fn structs() -> Vec<(String, Vec<String>)> {
    let h = strip_comments(&header());
    let mut out = Vec::new();
    let mut rest = h.as_str();
    while let Some(i) = rest.find("typedef struct ") {
        rest = &rest[i..];
        let Some(open) = rest.find('{') else { break };
        let semi = rest.find(';').unwrap();
        if semi < open {
            rest = &rest[semi..];
            continue; // opaque handle
        }
        let close = rest.find('}').unwrap();
        let body = &rest[open + 1..close];
        let name_end = rest[close..].find(';').unwrap() + close;
        let name = rest[close + 1..name_end].trim().to_string();
        let fields = body
            .split(';')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                if let Some(p) = d.find("(*") {
                    d[p + 2..p + 2 + d[p + 2..].find(')').unwrap()].trim().to_string()
                } else {
                    d.split_whitespace().last().unwrap().trim_start_matches('*').to_string()
                }
            })
            .collect();
        out.push((name, fields));
        rest = &rest[name_end..];
    }
    out
}

macro_rules! rust_layout {
    ($($cty:literal => $rty:ty { $($f:ident),* $(,)? })*) => {{
        let mut m: BTreeMap<String, (usize, Vec<(String, usize)>)> = BTreeMap::new();
        $( m.insert($cty.to_string(), (size_of::<$rty>(), vec![$((stringify!($f).to_string(), offset_of!($rty, $f))),*])); )*
        m
    }};
}

fn rust() -> BTreeMap<String, (usize, Vec<(String, usize)>)> {
    rust_layout! {
        "ngx_plugin_str_t" => sys::Str { data, len }
        "ngx_plugin_directive_t" => sys::Directive { name, contexts, flags, min_args, max_args, block_context, set }
        "ngx_plugin_http_handler_t" => sys::HttpHandler { phase, handler }
        "ngx_plugin_buf_t" => sys::Buf { data, len, fd, flags, file_pos, file_len }
        "ngx_plugin_header_t" => sys::Header { name, value }
        "ngx_plugin_host_t" => sys::Host {
            struct_size, abi_major, abi_minor, reserved, version, supports, log,
            conf_error, conf_position, parse_flag, parse_size, parse_time_ms, conf_full_path,
            conf_set_block_data, conf_block_data, conf_block_child, conf_set_content_handler,
            conf_define_variable, conf_shm_zone, conf_listen,
            spawn_helper, run_loop, worker_slot,
            http_get, http_header_in, http_header_in_at, http_set_status, http_status,
            http_header_out_add, http_header_out_set, http_header_out, http_send_header,
            http_send_body, http_next_body_filter, http_alloc, http_set_ctx, http_ctx,
            http_var, http_var_set, http_read_body, http_body, http_internal_redirect,
            http_resume, http_finalize,
            timer_add, timer_cancel, conn_connect, conn_watch, conn_read, conn_write,
            conn_start_tls, conn_peer, conn_close, relay,
            shm_addr, shm_is_new, shm_lock, shm_unlock, conn_error, http_output_queued, http_resume_when_drained, conf_location,
            conf_tls, conn_tls, conn_tls_info, conf_open_file, file_write,
            http_headers_in, http_headers_out_set, http_set_uri, conf_conf_path, conf_add_path, conf_block_id, http_enter_block, conn_set_idle, conf_define_variable_prefix, http_subrequest, http_set_data, http_data, stats, http_gzip_ok, http_conf, conf_server_names,
        }
        "ngx_plugin_tls_opts_t" => sys::TlsOpts {
            struct_size, flags, reserved, certificates, keys, ncertificates, trusted_certificate, protocols, ciphers,
        }
        "ngx_plugin_def_t" => sys::Def {
            struct_size, abi_major, abi_minor, min_host_minor, name, version, directives,
            ndirectives, create_conf, merge_conf, free_conf, init_cycle, init_worker,
            exit_worker, fini_cycle, handlers, nhandlers, header_filter, body_filter,
        }
    }
}

fn compile_and_run(src: &str, name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("ngxr-layout-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("probe.c");
    std::fs::write(&c, src).unwrap();
    let exe = dir.join("probe");
    let inc = root().join("include");
    let o = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I"])
        .arg(&inc)
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(o.status.success(), "probe failed to compile: {}", String::from_utf8_lossy(&o.stderr));
    let out = Command::new(&exe).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn header_and_mirror_have_identical_layouts() {
    let structs = structs();
    let rust = rust();
    let mut src = String::from("#include <stdio.h>\n#include \"ngx_plugin.h\"\nint main(void) {\n");
    for (name, fields) in &structs {
        src += &format!("printf(\"{name} size %zu\\n\", sizeof({name}));\n");
        for f in fields {
            src += &format!("printf(\"{name} {f} %zu\\n\", offsetof({name}, {f}));\n");
        }
    }
    src += "return 0;\n}\n";
    let out = compile_and_run(&src, "layout");
    let mut c: BTreeMap<String, (usize, Vec<(String, usize)>)> = BTreeMap::new();
    for line in out.lines() {
        let v: Vec<&str> = line.split(' ').collect();
        let e = c.entry(v[0].to_string()).or_default();
        if v[1] == "size" {
            e.0 = v[2].parse().unwrap();
        } else {
            e.1.push((v[1].to_string(), v[2].parse().unwrap()));
        }
    }
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        rust.keys().collect::<Vec<_>>(),
        "every struct in the header must be mirrored"
    );
    for (name, want) in &c {
        assert_eq!(&rust[name], want, "layout of {name} differs between header and plugin_api::sys");
    }
}

#[derive(serde::Deserialize)]
struct Manifest {
    #[serde(rename = "struct")]
    structs: BTreeMap<String, Vec<Slot>>,
}

#[derive(serde::Deserialize)]
struct Slot {
    name: String,
    since: u32,
}

#[test]
fn tables_are_append_only() {
    let text = std::fs::read_to_string(root().join("include/ngx_plugin.abi.toml")).unwrap();
    let m: Manifest = toml::from_str(&text).unwrap();
    let header: BTreeMap<String, Vec<String>> = structs().into_iter().collect();
    for (name, slots) in &m.structs {
        let have = header.get(name).unwrap_or_else(|| panic!("{name} is in the manifest but not the header"));
        let want: Vec<&String> = slots.iter().map(|s| &s.name).collect();
        assert_eq!(have.iter().collect::<Vec<_>>(), want, "{name}: slots removed, reordered or renamed");
        let mut last = 0;
        for s in slots {
            assert!(s.since >= last, "{name}.{}: a slot added in minor {} sits after one from {last}", s.name, s.since);
            assert!(s.since <= sys::ABI_MINOR, "{name}.{}: since {} is newer than the ABI", s.name, s.since);
            last = s.since;
        }
    }
    for name in header.keys() {
        assert!(m.structs.contains_key(name), "{name} is missing from the manifest");
    }
}

#[test]
fn header_compiles_as_c_and_cxx() {
    let inc = root().join("include");
    let dir = std::env::temp_dir().join(format!("ngxr-hdr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("t.c");
    std::fs::write(&src, "#include \"ngx_plugin.h\"\nint main(void) { return NGX_PLUGIN_ABI_MAJOR - 1; }\n").unwrap();
    for (cc, extra) in [("cc", vec!["-std=c99"]), ("c++", vec!["-x", "c++", "-std=c++11"])] {
        let o = Command::new(cc)
            .args(&extra)
            .args(["-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only", "-I"])
            .arg(&inc)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("{cc}: {e}"));
        assert!(o.status.success(), "{cc}: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/*
 * ngx_plugin.h -- the ngxr plugin ABI, version 1.4.
 *
 * 1.1 appended conn_error, http_output_queued, http_resume_when_drained and
 * conf_location to the host table, and the NGX_PLUGIN_TIMEDOUT code.
 * 1.2 appended conf_tls, conn_tls and conn_tls_info (TLS on plugin
 * connections: upstream TLS, STARTTLS), with ngx_plugin_tls_opts_t.
 * 1.3 appended conf_open_file and file_write (log files the host reopens
 * on USR1, `ngxr -s reopen`).
 * 1.4 appended http_headers_in and http_headers_out_set (several request
 * headers read, or response headers set, in one call), with
 * ngx_plugin_header_t.
 *
 * This header is the whole contract between the ngxr host and a plugin.
 * It is C99, depends only on <stdint.h>, <stddef.h> and <stdbool.h>, and
 * compiles as C and C++.
 *
 * HANDSHAKE. A plugin is a shared object exporting exactly one symbol,
 * NGX_PLUGIN_ENTRY (ngx_plugin_entry_v1). The host calls it once per load
 * with its host table; the plugin returns a pointer to its definition
 * (ngx_plugin_def_t), which must stay valid while the image is loaded.
 * The host loads the plugin when:
 *     def->abi_major == host major   and   def->abi_minor <= host minor
 *     and def->min_host_minor <= host minor.
 * Otherwise it refuses it, naming the file and both versions.
 *
 * STABILITY. Tables (ngx_plugin_host_t, ngx_plugin_def_t) begin with
 * struct_size, abi_major, abi_minor and only ever grow at the end: a
 * field is never removed, reordered or retyped within a major version.
 * Read a host-table slot only if it lies within host->struct_size
 * (NGX_PLUGIN_HOST_HAS(host, slot)); the host reads a definition field only
 * if it lies within def->struct_size. Every function pointer may be NULL
 * in a plugin definition (NULL = default behaviour).
 *
 * HANDLES. Requests, connections, configuration contexts, cycles and
 * shared zones are opaque handles. Plugins never see host structures.
 *
 * STRINGS. Strings cross as ngx_plugin_str_t (pointer + length, not NUL
 * terminated) unless a parameter says "NUL-terminated". A string the host
 * returns is BORROWED: valid until the callback that received it returns,
 * unless the function documents a longer lifetime. The host copies every
 * string it keeps; nothing long-lived points into a plugin image.
 *
 * RETURN CODES. Functions return ngx_plugin_rc_t: NGX_PLUGIN_OK and the
 * negative codes below, or an HTTP status 100..599 where documented
 * ("finalize the request with this status"). Unknown values read as
 * NGX_PLUGIN_ERROR.
 *
 * PROCESSES. Each function states where it may be called:
 *   [conf]    during configuration (directive set, create/merge) in the master;
 *   [master]  in the master after configuration (init_cycle);
 *   [worker]  in a worker or helper process, on its event-loop thread;
 *   [any]     anywhere.
 * Calling a function in the wrong place returns NGX_PLUGIN_INVALID.
 *
 * FAILURE. A plugin must not let a C++ exception or Rust panic cross this
 * boundary (the plugin-api crate catches panics at every entry). A
 * handler's error becomes a logged 500, never undefined behaviour.
 * The host may lack an implementation of a slot in this version of ngxr;
 * such a slot returns NGX_PLUGIN_UNSUPPORTED, and host->supports() tells
 * in advance.
 */

#ifndef NGX_PLUGIN_H
#define NGX_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Versions and the entry point                                        */
/* ------------------------------------------------------------------ */

/** ABI major version: a change here is incompatible. */
#define NGX_PLUGIN_ABI_MAJOR 1
/** ABI minor version: grows when slots are appended. */
#define NGX_PLUGIN_ABI_MINOR 14
/** Name of the one symbol a plugin exports (the major is in the name). */
#define NGX_PLUGIN_ENTRY_SYMBOL "ngx_plugin_entry_v1"


/* ------------------------------------------------------------------ */
/* Return codes                                                        */
/* ------------------------------------------------------------------ */

typedef int32_t ngx_plugin_rc_t;

/** Success; in a phase handler: this phase is done, go to the next. */
#define NGX_PLUGIN_OK           0
/** Failure; in a handler: finalize the request with 500. */
#define NGX_PLUGIN_ERROR       -1
/** Not finished: the request is suspended until host->http_resume(). */
#define NGX_PLUGIN_AGAIN       -2
/** The handler finalized the request itself (response sent). */
#define NGX_PLUGIN_DONE        -4
/** Not handled here: the host tries the next handler. */
#define NGX_PLUGIN_DECLINED    -5
/** A looked-up item (header, variable, zone) does not exist. */
#define NGX_PLUGIN_NOT_FOUND   -10
/** An argument is invalid, or the call is not allowed in this process or phase. */
#define NGX_PLUGIN_INVALID     -11
/** This host does not implement the function (see host->supports). */
#define NGX_PLUGIN_UNSUPPORTED -12
/** The request or connection the handle names has finished. */
#define NGX_PLUGIN_GONE        -13
/** (1.1) conn_error: the connection's last failure was a timeout. */
#define NGX_PLUGIN_TIMEDOUT    -14

/* ------------------------------------------------------------------ */
/* Basic types and handles                                             */
/* ------------------------------------------------------------------ */

/** A byte string: pointer and length, not NUL-terminated. */
typedef struct ngx_plugin_str_s {
    const uint8_t *data;
    size_t len;
} ngx_plugin_str_t;

/** A configuration-parsing context (one directive being applied). [conf] */
typedef struct ngx_plugin_conf_s ngx_plugin_conf_t;
/** A configuration generation: one per start or reload. */
typedef struct ngx_plugin_cycle_s ngx_plugin_cycle_t;
/** An HTTP request. Invalid once finalized (calls return NGX_PLUGIN_GONE). */
typedef struct ngx_plugin_request_s ngx_plugin_request_t;
/** A host-managed connection: upstream, protocol client or helper socket. */
typedef struct ngx_plugin_conn_s ngx_plugin_conn_t;
/** A shared memory zone. */
typedef struct ngx_plugin_shm_s ngx_plugin_shm_t;
/** A timer id; 0 is never a valid id. */
typedef uint64_t ngx_plugin_timer_t;

/* ------------------------------------------------------------------ */
/* Log levels (nginx's)                                                */
/* ------------------------------------------------------------------ */

#define NGX_PLUGIN_LOG_EMERG  1
#define NGX_PLUGIN_LOG_ALERT  2
#define NGX_PLUGIN_LOG_CRIT   3
#define NGX_PLUGIN_LOG_ERR    4
#define NGX_PLUGIN_LOG_WARN   5
#define NGX_PLUGIN_LOG_NOTICE 6
#define NGX_PLUGIN_LOG_INFO   7
#define NGX_PLUGIN_LOG_DEBUG  8
/** (1.14) Or'ed into a level: the message says a file was not found; the
 *  host drops it where the request's location has `log_not_found off`,
 *  as nginx does. (An older host logs it at debug level.) */
#define NGX_PLUGIN_LOG_NOT_FOUND 0x100

/* ------------------------------------------------------------------ */
/* Configuration contexts and directives                               */
/* ------------------------------------------------------------------ */

/* Context bits: where a directive may appear; also the "level" of a
 * plugin configuration object. */
#define NGX_PLUGIN_CTX_MAIN         0x0001u /* top level */
#define NGX_PLUGIN_CTX_HTTP         0x0004u /* http {} */
#define NGX_PLUGIN_CTX_SERVER       0x0008u /* http { server {} } */
#define NGX_PLUGIN_CTX_LOCATION     0x0010u /* location {} (any depth) */
#define NGX_PLUGIN_CTX_UPSTREAM     0x0020u /* http { upstream {} } */
#define NGX_PLUGIN_CTX_IF           0x0040u /* if () {} in server/location */
#define NGX_PLUGIN_CTX_LIMIT_EXCEPT 0x0080u /* limit_except {} */
#define NGX_PLUGIN_CTX_MAIL         0x0100u /* mail {} */
#define NGX_PLUGIN_CTX_MAIL_SERVER  0x0200u /* mail { server {} } */
/** With NGX_PLUGIN_DIR_BLOCK: children are free-form and not checked
 *  (like types {}); the plugin reads them with host->conf_block_child. */
#define NGX_PLUGIN_CTX_OPAQUE       0x80000000u

/* Directive flags. */
/** The directive opens a block: `name args { ... }`. */
#define NGX_PLUGIN_DIR_BLOCK  0x1u
/** A second occurrence in the same block is an error ("is duplicate"). */
#define NGX_PLUGIN_DIR_UNIQUE 0x2u

/** max_args value meaning "no upper bound". */
#define NGX_PLUGIN_ARGS_ANY UINT32_MAX

/**
 * Applies one directive.
 * Called [conf], in file order, after create_conf for the enclosing block.
 * @param cf    the parsing context (for errors, positions, block data)
 * @param conf  this plugin's configuration object for the block the
 *              directive appears in (from create_conf at that level)
 * @param args  the arguments after the name, quotes removed, variables
 *              unexpanded; nargs entries
 * @return NGX_PLUGIN_OK, or NGX_PLUGIN_ERROR after host->conf_error()
 *         (the host reports the message with the file and line).
 * OWNERSHIP: args are borrowed for the call; copy what you keep.
 */
typedef ngx_plugin_rc_t (*ngx_plugin_set_pt)(ngx_plugin_conf_t *cf, void *conf,
                                             const ngx_plugin_str_t *args, size_t nargs);

/** One directive a plugin adds. */
typedef struct ngx_plugin_directive_s {
    /** Name, NUL-terminated. OWNERSHIP: copied by the host at load. */
    const char *name;
    /** Bitmask of NGX_PLUGIN_CTX_* where it may appear. */
    uint32_t contexts;
    /** NGX_PLUGIN_DIR_* flags. */
    uint32_t flags;
    /** Minimum and maximum argument counts (NGX_PLUGIN_ARGS_ANY = unbounded). */
    uint32_t min_args;
    uint32_t max_args;
    /** For blocks: the context of the children (an NGX_PLUGIN_CTX_* value). */
    uint32_t block_context;
    /** Applies the directive; NULL accepts and ignores it. */
    ngx_plugin_set_pt set;
} ngx_plugin_directive_t;

/* ------------------------------------------------------------------ */
/* HTTP                                                                */
/* ------------------------------------------------------------------ */

/* Phases, run in this order for every request. */
#define NGX_PLUGIN_PHASE_POST_READ      0
#define NGX_PLUGIN_PHASE_SERVER_REWRITE 1
#define NGX_PLUGIN_PHASE_REWRITE        2
#define NGX_PLUGIN_PHASE_PREACCESS      3
#define NGX_PLUGIN_PHASE_ACCESS         4
#define NGX_PLUGIN_PHASE_PRECONTENT     5
#define NGX_PLUGIN_PHASE_CONTENT        6
#define NGX_PLUGIN_PHASE_LOG            7

/**
 * A phase handler.
 * Called [worker] when the request reaches the handler's phase; handlers
 * of one phase run in plugin load order, then in declaration order.
 * @param r     the request
 * @param conf  this plugin's configuration for the request's location
 *              (merged from location, server, http)
 * @return NGX_PLUGIN_OK (phase done; in CONTENT: response complete),
 *         NGX_PLUGIN_DECLINED (next handler), NGX_PLUGIN_AGAIN (suspended;
 *         call host->http_resume later), NGX_PLUGIN_DONE (finalized by the
 *         handler), NGX_PLUGIN_ERROR (500) or a status 100..599 (finalize
 *         with that status, using error_page if configured).
 *         In the ACCESS phase OK means "access granted", as in nginx: with
 *         `satisfy all` the other access handlers still run; with
 *         `satisfy any` it ends the phase, and a 401/403 only stands if no
 *         handler grants.
 *         In the LOG phase the return value is ignored.
 */
typedef ngx_plugin_rc_t (*ngx_plugin_http_handler_pt)(ngx_plugin_request_t *r, void *conf);

/** A phase handler declaration. */
typedef struct ngx_plugin_http_handler_s {
    /** NGX_PLUGIN_PHASE_*; other values refuse the plugin at load. */
    uint32_t phase;
    ngx_plugin_http_handler_pt handler;
} ngx_plugin_http_handler_t;

/* Buffer flags. */
#define NGX_PLUGIN_BUF_LAST  0x1u /* last buffer of the response body */
#define NGX_PLUGIN_BUF_FLUSH 0x2u /* send what is buffered now */
#define NGX_PLUGIN_BUF_FILE  0x4u /* a file region: fd, file_pos, file_len */

/**
 * A piece of response body: memory (data, len) or a file region.
 * OWNERSHIP: borrowed by the callee for the call. The host copies memory
 * it must keep and dup()s file descriptors.
 */
typedef struct ngx_plugin_buf_s {
    const uint8_t *data;
    size_t len;
    int32_t fd;
    uint32_t flags;
    int64_t file_pos;
    int64_t file_len;
} ngx_plugin_buf_t;

/** A header line: name and value (1.4, http_headers_out_set). */
typedef struct ngx_plugin_header_s {
    ngx_plugin_str_t name;
    ngx_plugin_str_t value;
} ngx_plugin_header_t;

/* ------------------------------------------------------------------ */
/* Log files (1.3)                                                      */
/* ------------------------------------------------------------------ */

/** A file opened for appending by conf_open_file; owned by the host and
 *  valid for the whole generation. The host reopens it on USR1. */
typedef struct ngx_plugin_file_s ngx_plugin_file_t;

/* ------------------------------------------------------------------ */
/* TLS contexts (1.2)                                                   */
/* ------------------------------------------------------------------ */

/** A TLS context built at configuration time by conf_tls; owned by the
 *  host and valid for the whole generation. */
typedef struct ngx_plugin_tls_s ngx_plugin_tls_t;

#define NGX_PLUGIN_TLS_SERVER     0x01u /* server side (STARTTLS); else client */
#define NGX_PLUGIN_TLS_VERIFY     0x02u /* client: verify the peer's chain and name */
#define NGX_PLUGIN_TLS_SNI        0x04u /* client: send the server name (SNI) */
#define NGX_PLUGIN_TLS_NO_REUSE   0x08u /* client: no session resumption */
#define NGX_PLUGIN_TLS_NO_TICKETS 0x10u /* server: no session tickets */

/**
 * What conf_tls builds. File names are resolved as nginx resolves
 * ssl_certificate (relative to the configuration file's directory).
 * Strings are borrowed for the call.
 */
typedef struct ngx_plugin_tls_opts_s {
    /** sizeof(ngx_plugin_tls_opts_t) as the plugin was built: lets later
     *  minors append fields. */
    size_t struct_size;
    /** NGX_PLUGIN_TLS_* bits. */
    uint32_t flags;
    uint32_t reserved;
    /** PEM certificate chains and their keys, `ncertificates` of each:
     *  required for a server (several: RSA and ECDSA, chosen per client);
     *  for a client, at most one (a client certificate). */
    const ngx_plugin_str_t *certificates;
    const ngx_plugin_str_t *keys;
    size_t ncertificates;
    /** PEM file of trusted CA certificates: required with VERIFY. */
    ngx_plugin_str_t trusted_certificate;
    /** "TLSv1.2 TLSv1.3" (ssl_protocols syntax); empty: both. */
    ngx_plugin_str_t protocols;
    /** OpenSSL cipher string for TLSv1.2 (ssl_ciphers syntax); empty:
     *  the default. */
    ngx_plugin_str_t ciphers;
} ngx_plugin_tls_opts_t;

/**
 * Header filter: may change status and response headers before they are
 * sent. Return NGX_PLUGIN_OK to continue down the chain, NGX_PLUGIN_ERROR
 * to abort the response. [worker]
 */
typedef ngx_plugin_rc_t (*ngx_plugin_header_filter_pt)(ngx_plugin_request_t *r, void *conf);

/**
 * Body filter: receives body buffers and passes (possibly new) buffers on
 * with host->http_next_body_filter(r, bufs, n). Returning without passing
 * holds the data back (e.g. to compress in larger blocks). [worker]
 * OWNERSHIP: `in` is borrowed for the call; pass it on unchanged for
 * zero-copy, or pass buffers from host->http_alloc (request lifetime).
 */
typedef ngx_plugin_rc_t (*ngx_plugin_body_filter_pt)(ngx_plugin_request_t *r, void *conf,
                                                     const ngx_plugin_buf_t *in, size_t n);

/* What host->http_get reads. */
#define NGX_PLUGIN_REQ_METHOD      0 /* "GET" */
#define NGX_PLUGIN_REQ_URI         1 /* normalized path, decoded ("$uri") */
#define NGX_PLUGIN_REQ_ARGS        2 /* query string without '?' ("$args") */
#define NGX_PLUGIN_REQ_REQUEST_URI 3 /* as received ("$request_uri") */
#define NGX_PLUGIN_REQ_PROTOCOL    4 /* "HTTP/1.1" */
#define NGX_PLUGIN_REQ_HOST        5 /* host name ("$host") */
#define NGX_PLUGIN_REQ_REMOTE_ADDR 6 /* client address ("$remote_addr") */
/* (1.5) The MIME type for $uri's extension by the location's `types`,
 * else its `default_type` (nginx's ngx_http_set_content_type). A host
 * older than 1.5 answers NGX_PLUGIN_INVALID. */
#define NGX_PLUGIN_REQ_CONTENT_TYPE 7
/* (1.5) "1" when a rewrite changed $uri in this location without a new
 * location search (`break`: nginx's !valid_location), else "". The proxy
 * then passes the whole URI instead of replacing the location's prefix. */
#define NGX_PLUGIN_REQ_URI_REWRITTEN 8
/* (1.5) The statuses the location's error_page directives cover, as
 * decimal numbers separated by spaces ("404 500 502"); "" when none. A
 * plugin relaying errors (proxy_intercept_errors) replaces only those. */
#define NGX_PLUGIN_REQ_ERROR_PAGES 9

/* Flags of host->http_set_uri (1.5). */
/* Search the locations again for the new URI once the REWRITE phase ends
 * (nginx's `rewrite ... last`, or a rewrite without a flag). */
#define NGX_PLUGIN_URI_RELOCATE 0x1u

/* ------------------------------------------------------------------ */
/* Async I/O                                                           */
/* ------------------------------------------------------------------ */

#define NGX_PLUGIN_EV_READ  0x1u
#define NGX_PLUGIN_EV_WRITE 0x2u
#define NGX_PLUGIN_EV_ERROR 0x4u

/** A timer fired. [worker] OWNERSHIP: data is the plugin's. */
typedef void (*ngx_plugin_timer_pt)(void *data);
/** A connection is ready (events: NGX_PLUGIN_EV_*), or connect finished. [worker] */
typedef void (*ngx_plugin_conn_pt)(ngx_plugin_conn_t *c, uint32_t events, void *data);
/** A body read or relay completed with rc. [worker] */
typedef void (*ngx_plugin_done_pt)(ngx_plugin_request_t *r, ngx_plugin_rc_t rc, void *data);
/** A protocol listener accepted a connection. [worker] */
typedef void (*ngx_plugin_accept_pt)(ngx_plugin_conn_t *c, void *listener_data);
/** A helper process's main function: runs the host loop via host->run_loop. */
typedef void (*ngx_plugin_helper_pt)(ngx_plugin_cycle_t *cy, void *data);
/**
 * A plugin-defined variable's value for r. Return NGX_PLUGIN_OK with *out
 * set (OWNERSHIP: out must stay valid until the handler returns; use
 * host->http_alloc for computed values) or NGX_PLUGIN_NOT_FOUND (empty).
 */
typedef ngx_plugin_rc_t (*ngx_plugin_var_pt)(ngx_plugin_request_t *r, void *data,
                                             ngx_plugin_str_t *out);
/**
 * (1.9) The value of a variable in a prefix family (conf_define_variable_prefix):
 * `rest` is the name after the prefix ("x_cache" for $upstream_http_x_cache).
 * As ngx_plugin_var_pt otherwise. OWNERSHIP: rest is borrowed for the call.
 */
typedef ngx_plugin_rc_t (*ngx_plugin_prefix_var_pt)(ngx_plugin_request_t *r, void *data,
                                                    ngx_plugin_str_t rest, ngx_plugin_str_t *out);

/* ------------------------------------------------------------------ */
/* The host table: functions the plugin calls                          */
/* ------------------------------------------------------------------ */

/**
 * Handed to the entry point. OWNERSHIP: owned by the host, valid for as
 * long as the plugin image is loaded; may be kept in a global.
 * Append-only: new slots go at the end and raise abi_minor.
 */
typedef struct ngx_plugin_host_s {
    uint32_t struct_size; /* sizeof(ngx_plugin_host_t) as the host knows it */
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t reserved;

    /** The host version string, e.g. "ngxr/0.1.0". NUL-terminated, static. [any] */
    const char *version;

    /** True if the host implements the slot at byte offset `slot_offset`
     *  of this table (offsetof(ngx_plugin_host_t, slot)). [any] */
    bool (*supports)(size_t slot_offset);

    /* ---- logging ---------------------------------------------------- */

    /** Writes a line to the error log at level (NGX_PLUGIN_LOG_*), tagged
     *  with the plugin name. [any] OWNERSHIP: msg borrowed. */
    void (*log)(uint32_t level, ngx_plugin_str_t msg);

    /* ---- configuration [conf] --------------------------------------- */

    /** Records an error for the directive being applied; the set callback
     *  then returns NGX_PLUGIN_ERROR. The host adds " in file:line". */
    void (*conf_error)(ngx_plugin_conf_t *cf, ngx_plugin_str_t msg);
    /** The directive's name, file and line. Strings borrowed for the call. */
    ngx_plugin_rc_t (*conf_position)(ngx_plugin_conf_t *cf, ngx_plugin_str_t *name,
                                     ngx_plugin_str_t *file, uint32_t *line);
    /** Parses "on"/"off" into *out (NGX_PLUGIN_INVALID otherwise). [any] */
    ngx_plugin_rc_t (*parse_flag)(ngx_plugin_str_t s, bool *out);
    /** Parses an nginx size ("512", "8k", "1m", "1g") into bytes. [any] */
    ngx_plugin_rc_t (*parse_size)(ngx_plugin_str_t s, uint64_t *out);
    /** Parses an nginx time ("10", "10s", "500ms", "1m", "2h", "1d") into ms. [any] */
    ngx_plugin_rc_t (*parse_time_ms)(ngx_plugin_str_t s, uint64_t *out);
    /** The prefix-resolved absolute form of a config path (borrowed until
     *  the set callback returns). */
    ngx_plugin_rc_t (*conf_full_path)(ngx_plugin_conf_t *cf, ngx_plugin_str_t path,
                                      ngx_plugin_str_t *out);
    /** Stores a pointer for the children of the block directive being
     *  applied (BLOCK directives only); children read it with
     *  conf_block_data. OWNERSHIP: the plugin's; free it in free_conf. */
    ngx_plugin_rc_t (*conf_set_block_data)(ngx_plugin_conf_t *cf, void *data);
    /** The pointer stored by the nearest enclosing block of this plugin. */
    void *(*conf_block_data)(ngx_plugin_conf_t *cf);
    /** For an OPAQUE block: child i's words (name first) into out[0..*n).
     *  *n is the capacity on entry, the count on return. NOT_FOUND past the end. */
    ngx_plugin_rc_t (*conf_block_child)(ngx_plugin_conf_t *cf, size_t i,
                                        ngx_plugin_str_t *out, size_t *n);
    /** Makes this plugin's `handler` the content handler of the location
     *  being configured (like nginx's clcf->handler): it runs in the
     *  CONTENT phase before any declared CONTENT handlers. */
    ngx_plugin_rc_t (*conf_set_content_handler)(ngx_plugin_conf_t *cf,
                                                ngx_plugin_http_handler_pt handler);
    /** Defines $name (without '$'), computed by get. */
    ngx_plugin_rc_t (*conf_define_variable)(ngx_plugin_conf_t *cf, ngx_plugin_str_t name,
                                            ngx_plugin_var_pt get, void *data);
    /** Declares a shared memory zone (see "Shared memory" below). */
    ngx_plugin_rc_t (*conf_shm_zone)(ngx_plugin_conf_t *cf, ngx_plugin_str_t name,
                                     uint64_t size, uint32_t layout_version,
                                     ngx_plugin_shm_t **out);
    /** Declares a protocol listener on `addr` ("143", "127.0.0.1:110",
     *  "[::1]:25"); accepted connections go to on_accept in workers.
     *  `ssl` makes the host do TLS before on_accept. */
    ngx_plugin_rc_t (*conf_listen)(ngx_plugin_conf_t *cf, ngx_plugin_str_t addr, bool ssl,
                                   ngx_plugin_accept_pt on_accept, void *data);

    /* ---- lifecycle [master] ----------------------------------------- */

    /** Starts a helper process supervised like a worker (respawned on crash),
     *  running `run` (which should call run_loop). Call from init_cycle. */
    ngx_plugin_rc_t (*spawn_helper)(ngx_plugin_cycle_t *cy, ngx_plugin_str_t name,
                                    ngx_plugin_helper_pt run, void *data);
    /** In a helper: runs the event loop until the process is told to stop. [worker] */
    void (*run_loop)(ngx_plugin_cycle_t *cy);
    /** The worker slot (0..n-1) of this process, or -1 in the master/helpers. [any] */
    int32_t (*worker_slot)(void);

    /* ---- HTTP request [worker] -------------------------------------- */

    /** Reads a request attribute (NGX_PLUGIN_REQ_*). Borrowed until the
     *  request finishes. */
    ngx_plugin_rc_t (*http_get)(ngx_plugin_request_t *r, uint32_t what, ngx_plugin_str_t *out);
    /** The first request header named `name` (case-insensitive). Borrowed
     *  until the request finishes. NOT_FOUND if absent. */
    ngx_plugin_rc_t (*http_header_in)(ngx_plugin_request_t *r, ngx_plugin_str_t name,
                                      ngx_plugin_str_t *value);
    /** Request header i (in received order). NOT_FOUND past the end. */
    ngx_plugin_rc_t (*http_header_in_at)(ngx_plugin_request_t *r, size_t i,
                                         ngx_plugin_str_t *name, ngx_plugin_str_t *value);
    /** Sets the response status (before the header is sent). */
    ngx_plugin_rc_t (*http_set_status)(ngx_plugin_request_t *r, uint32_t status);
    /** The response status set so far (0 if none). */
    uint32_t (*http_status)(ngx_plugin_request_t *r);
    /** Adds a response header. A `Server` or `Date` header replaces the
     *  host's own (an upstream's, passed on); an empty one means none at
     *  all (nginx's proxy_pass_header with an upstream that sent none).
     *  OWNERSHIP: name and value copied. */
    ngx_plugin_rc_t (*http_header_out_add)(ngx_plugin_request_t *r, ngx_plugin_str_t name,
                                           ngx_plugin_str_t value);
    /** Replaces every response header `name` by one with `value`; an empty
     *  value.data (NULL) removes them. */
    ngx_plugin_rc_t (*http_header_out_set)(ngx_plugin_request_t *r, ngx_plugin_str_t name,
                                           ngx_plugin_str_t value);
    /** The first response header `name`; borrowed until it changes. */
    ngx_plugin_rc_t (*http_header_out)(ngx_plugin_request_t *r, ngx_plugin_str_t name,
                                       ngx_plugin_str_t *value);
    /** Sends status and headers through the header filters. */
    ngx_plugin_rc_t (*http_send_header)(ngx_plugin_request_t *r);
    /** Sends body buffers through the body filters (sends the header first
     *  if not yet sent). Mark the last with NGX_PLUGIN_BUF_LAST.
     *  OWNERSHIP: memory copied as needed, file fds dup()ed. */
    ngx_plugin_rc_t (*http_send_body)(ngx_plugin_request_t *r, const ngx_plugin_buf_t *bufs,
                                      size_t n);
    /** From a body filter: passes buffers to the next filter. */
    ngx_plugin_rc_t (*http_next_body_filter)(ngx_plugin_request_t *r,
                                             const ngx_plugin_buf_t *bufs, size_t n);
    /** Memory freed when the request finishes (NULL on failure). */
    void *(*http_alloc)(ngx_plugin_request_t *r, size_t size);
    /** Attaches per-request plugin state; `free` (may be NULL) runs when
     *  the request finishes, before the request's http_alloc memory is
     *  released (so the state may live in it). One slot per plugin. */
    ngx_plugin_rc_t (*http_set_ctx)(ngx_plugin_request_t *r, void *ctx, void (*free_fn)(void *));
    /** This plugin's per-request state, or NULL. */
    void *(*http_ctx)(ngx_plugin_request_t *r);
    /** A variable's value ("uri" for $uri). Borrowed until the handler returns. */
    ngx_plugin_rc_t (*http_var)(ngx_plugin_request_t *r, ngx_plugin_str_t name,
                                ngx_plugin_str_t *out);
    /** Sets a variable (for `set`-style plugins). Value copied. Core
     *  variables are refused (INVALID) but for `uri`, `args`, (1.5)
     *  `remote_addr`, which takes an IP address for this request only
     *  (realip; the connection's own stays `$realip_remote_addr`), (1.11)
     *  `request_method`, `limit_rate`, and (1.14)
     *  `remote_port`, a port for this request only (realip from a PROXY
     *  protocol header; `$realip_remote_port` keeps the connection's). */
    ngx_plugin_rc_t (*http_var_set)(ngx_plugin_request_t *r, ngx_plugin_str_t name,
                                    ngx_plugin_str_t value);
    /** Starts reading the request body; `done` runs when it is complete or
     *  failed (rc is OK or a status such as 413/408). Returns AGAIN while
     *  reading, or OK if the body was already complete (done not called). */
    ngx_plugin_rc_t (*http_read_body)(ngx_plugin_request_t *r, ngx_plugin_done_pt done,
                                      void *data);
    /** The body read so far as buffers (memory or a temp file). */
    ngx_plugin_rc_t (*http_body)(ngx_plugin_request_t *r, const ngx_plugin_buf_t **bufs,
                                 size_t *n);
    /** Restarts processing at `uri` (with `args`, may be empty) in the
     *  server's locations; the handler then returns NGX_PLUGIN_DONE. */
    ngx_plugin_rc_t (*http_internal_redirect)(ngx_plugin_request_t *r, ngx_plugin_str_t uri,
                                              ngx_plugin_str_t args);
    /** Resumes a request a handler suspended with NGX_PLUGIN_AGAIN: the
     *  same handler is called again. Deferred if called inside a callback. */
    ngx_plugin_rc_t (*http_resume)(ngx_plugin_request_t *r);
    /** Finalizes a suspended request with rc (status, OK or ERROR). */
    ngx_plugin_rc_t (*http_finalize)(ngx_plugin_request_t *r, ngx_plugin_rc_t rc);

    /* ---- timers and connections [worker] ---------------------------- */

    /** Arms a one-shot timer owned by r (NULL: owned by the process).
     *  Removed automatically when its owner finishes; never delays a
     *  graceful exit. Returns the id in *out. */
    ngx_plugin_rc_t (*timer_add)(ngx_plugin_request_t *owner, uint64_t ms, ngx_plugin_timer_pt cb,
                                 void *data, ngx_plugin_timer_t *out);
    /** Cancels a timer; unknown or fired ids are ignored. */
    void (*timer_cancel)(ngx_plugin_timer_t id);
    /** Starts a nonblocking connect to "host:port" (numeric or resolved at
     *  config time) or, from 1.9 on, "unix:/path" (a Unix-domain stream
     *  socket; an older host answers NGX_PLUGIN_INVALID). cb runs with NGX_PLUGIN_EV_WRITE on success or
     *  NGX_PLUGIN_EV_ERROR on failure/timeout. Owned by `owner` (may be NULL). */
    ngx_plugin_rc_t (*conn_connect)(ngx_plugin_request_t *owner, ngx_plugin_str_t addr,
                                    uint64_t timeout_ms, ngx_plugin_conn_pt cb, void *data,
                                    ngx_plugin_conn_t **out);
    /** Sets the readiness callback and interest (NGX_PLUGIN_EV_READ|WRITE). */
    ngx_plugin_rc_t (*conn_watch)(ngx_plugin_conn_t *c, uint32_t interest, ngx_plugin_conn_pt cb,
                                  void *data);
    /** Reads up to len bytes: returns the count in *n (0 = EOF) and
     *  NGX_PLUGIN_OK, or NGX_PLUGIN_AGAIN, or NGX_PLUGIN_ERROR. */
    ngx_plugin_rc_t (*conn_read)(ngx_plugin_conn_t *c, uint8_t *buf, size_t len, size_t *n);
    /** Writes buffers (memory or file regions); *n = bytes written. */
    ngx_plugin_rc_t (*conn_write)(ngx_plugin_conn_t *c, const ngx_plugin_buf_t *bufs, size_t nbufs,
                                  size_t *n);
    /** Reserved since 1.0 and never implemented: it cannot say which
     *  certificates to trust or present. Answers NGX_PLUGIN_UNSUPPORTED;
     *  use conf_tls + conn_tls (1.2). */
    ngx_plugin_rc_t (*conn_start_tls)(ngx_plugin_conn_t *c, ngx_plugin_str_t server_name,
                                      bool verify, ngx_plugin_conn_pt cb, void *data);
    /** The peer address as text ("127.0.0.1:5555"). Borrowed while c lives. */
    ngx_plugin_rc_t (*conn_peer)(ngx_plugin_conn_t *c, ngx_plugin_str_t *out);
    /** Closes the connection (deferred if inside its own callback). */
    void (*conn_close)(ngx_plugin_conn_t *c);
    /** Copies bytes both ways between the request's client connection (or
     *  connection a when r is NULL) and b until either side closes; done
     *  runs then. The host owns both connections from this call on. */
    ngx_plugin_rc_t (*relay)(ngx_plugin_request_t *r, ngx_plugin_conn_t *a, ngx_plugin_conn_t *b,
                             ngx_plugin_done_pt done, void *data);

    /* ---- shared memory [worker] ------------------------------------- */

    /** The zone's memory and size. Addresses differ between processes:
     *  store offsets, never pointers, in the zone. */
    ngx_plugin_rc_t (*shm_addr)(ngx_plugin_shm_t *z, void **addr, uint64_t *size);
    /** True if the zone was created by this generation (not kept from a
     *  previous one across reload): initialise it then. */
    bool (*shm_is_new)(ngx_plugin_shm_t *z);
    /** Takes the zone's cross-process lock (blocking; keep it short). */
    void (*shm_lock)(ngx_plugin_shm_t *z);
    /** Releases the zone's lock. */
    void (*shm_unlock)(ngx_plugin_shm_t *z);

    /* ---- appended in 1.1 -------------------------------------------- */

    /** (1.1) The connection's last failure, as an error-log phrase
     *  ("connect() failed (111: Connection refused)"). Returns NGX_PLUGIN_OK
     *  if there was none, NGX_PLUGIN_TIMEDOUT if it was conn_connect's
     *  timeout, NGX_PLUGIN_ERROR otherwise. OWNERSHIP: *text borrowed until
     *  the next call on c. [worker] */
    ngx_plugin_rc_t (*conn_error)(ngx_plugin_conn_t *c, ngx_plugin_str_t *text);
    /** (1.1) Bytes of response output queued for the client and not yet
     *  written (0 for a finished request). [worker] */
    size_t (*http_output_queued)(ngx_plugin_request_t *r);
    /** (1.1) Flow control for streaming handlers: if at most `limit` bytes
     *  are queued, returns NGX_PLUGIN_OK. Otherwise returns
     *  NGX_PLUGIN_AGAIN and arranges that, once the client has taken enough
     *  for the queue to drop to `limit`, the handler (which returns
     *  NGX_PLUGIN_AGAIN) is called again, as with http_resume. [worker] */
    ngx_plugin_rc_t (*http_resume_when_drained)(ngx_plugin_request_t *r, size_t limit);
    /** (1.1) The location block around the directive being applied: its
     *  modifier ("", "=", "~", "~*", "^~", or "@" for a named location) and
     *  its URI, pattern or name. NOT_FOUND outside a location. Strings
     *  borrowed until the set callback returns. [conf] */
    ngx_plugin_rc_t (*conf_location)(ngx_plugin_conf_t *cf, ngx_plugin_str_t *modifier,
                                     ngx_plugin_str_t *name);

    /* ---- appended in 1.2 -------------------------------------------- */

    /** (1.2) Builds a TLS context (certificates and keys loaded, protocols
     *  and ciphers checked) into *out. On a problem, returns NGX_PLUGIN_ERROR
     *  with the reason set as by conf_error (the configuration is refused
     *  with file:line). OWNERSHIP: the host owns *out until the generation
     *  ends. [conf] (create_conf, directives, merge_conf) */
    ngx_plugin_rc_t (*conf_tls)(ngx_plugin_conf_t *cf, const ngx_plugin_tls_opts_t *opts,
                                ngx_plugin_tls_t **out);
    /** (1.2) Starts TLS on a connected connection with context `tls`: the
     *  client side (server_name is checked against the certificate with
     *  VERIFY, and sent with SNI; a DNS name or an IP address), or the
     *  server side for a SERVER context (STARTTLS; server_name ignored).
     *  Bytes the plugin has not read yet must not be TLS. cb runs once with
     *  NGX_PLUGIN_EV_WRITE when the handshake is done or NGX_PLUGIN_EV_ERROR
     *  if it failed or took longer than timeout_ms (0: no limit); conn_error
     *  says why. Until then conn_read/conn_write answer AGAIN; afterwards
     *  they carry plaintext and conn_watch works as before. [worker] */
    ngx_plugin_rc_t (*conn_tls)(ngx_plugin_conn_t *c, ngx_plugin_tls_t *tls,
                                ngx_plugin_str_t server_name, uint64_t timeout_ms,
                                ngx_plugin_conn_pt cb, void *data);
    /** (1.2) The negotiated protocol ("TLSv1.3") and cipher (OpenSSL's
     *  name). NOT_FOUND when TLS is not established. OWNERSHIP: static
     *  strings. [worker] */
    ngx_plugin_rc_t (*conn_tls_info)(ngx_plugin_conn_t *c, ngx_plugin_str_t *protocol,
                                     ngx_plugin_str_t *cipher);

    /* ---- appended in 1.3 -------------------------------------------- */

    /** (1.3) Opens `path` (relative paths against the prefix) for
     *  appending, creating it with mode 0644, as nginx opens its logs: in
     *  the master, so workers that dropped privileges still write to it.
     *  On USR1 (`ngxr -s reopen`, log rotation) the host reopens it in the
     *  master, hands it to the worker user, then reopens it in every
     *  worker; a failed reopen keeps the old file. Each call opens its own
     *  handle: share one per path yourself. On failure returns
     *  NGX_PLUGIN_ERROR with the reason set as by conf_error ("open()
     *  \"/x\" failed (13: Permission denied)"). OWNERSHIP: the host owns *out
     *  until the generation ends. [conf] */
    ngx_plugin_rc_t (*conf_open_file)(ngx_plugin_conf_t *cf, ngx_plugin_str_t path,
                                      ngx_plugin_file_t **out);
    /** (1.3) Appends len bytes to f in one write where the system allows
     *  (O_APPEND: lines from several workers do not interleave). On
     *  failure logs "write() to \"/x\" failed (...)" at alert and returns
     *  NGX_PLUGIN_ERROR. [worker] (also [conf] and in the master) */
    ngx_plugin_rc_t (*file_write)(ngx_plugin_file_t *f, const uint8_t *data, size_t len);

    /* ---- appended in 1.4 -------------------------------------------- */

    /** (1.4) Looks up n request headers in one call: values[i] is the
     *  first header named names[i] (case-insensitive), as http_header_in
     *  answers it, or {NULL, 0} when there is none. Returns NGX_PLUGIN_OK.
     *  OWNERSHIP: names borrowed for the call; values borrowed until the
     *  request finishes. [worker] */
    ngx_plugin_rc_t (*http_headers_in)(ngx_plugin_request_t *r, const ngx_plugin_str_t *names,
                                       ngx_plugin_str_t *values, size_t n);
    /** (1.4) Sets n response headers in one call, each as
     *  http_header_out_set would in order (replaces every header of that
     *  name; a value with data NULL removes them). Every line is checked
     *  first: if one is invalid, returns NGX_PLUGIN_INVALID and changes
     *  nothing. OWNERSHIP: copied. [worker] */
    ngx_plugin_rc_t (*http_headers_out_set)(ngx_plugin_request_t *r, const ngx_plugin_header_t *h,
                                            size_t n);

    /* ---- appended in 1.5 -------------------------------------------- */

    /** (1.5) Changes the request's URI ($uri, which must start with '/')
     *  and, when args.data is not NULL, its arguments ($args), as nginx's
     *  rewrite module does. From SERVER_REWRITE the location is then
     *  searched for the new URI as usual. From REWRITE, with
     *  NGX_PLUGIN_URI_RELOCATE the locations are searched again once the
     *  phase ends and the request goes on from the new location's REWRITE
     *  phase, as an internal request (at most 10 times per request: the
     *  11th answers 500, "rewrite or internal redirection cycle"); without
     *  it the request stays in its location (a `break`), and cancels a
     *  relocation asked for earlier in the phase. Returns NGX_PLUGIN_INVALID
     *  for a URI not starting with '/' or in another phase. OWNERSHIP:
     *  copied. [worker] */
    ngx_plugin_rc_t (*http_set_uri)(ngx_plugin_request_t *r, ngx_plugin_str_t uri,
                                    ngx_plugin_str_t args, uint32_t flags);
    /** (1.5) The absolute form of a path relative to the directory of the
     *  main configuration file (nginx's conf prefix, as for include,
     *  ssl_certificate, auth_basic_user_file); conf_full_path resolves
     *  against the prefix instead. Borrowed until the set callback
     *  returns. [conf] */
    ngx_plugin_rc_t (*conf_conf_path)(ngx_plugin_conf_t *cf, ngx_plugin_str_t path,
                                      ngx_plugin_str_t *out);
    /** (1.6) Asks the host for a directory the workers may write (a cache,
     *  temporary files): `path` (relative: to the prefix) is created with
     *  its parents and given to the worker user before workers drop their
     *  privileges, as nginx's master does with its paths. Returns
     *  NGX_PLUGIN_INVALID for an empty path. OWNERSHIP: copied. [conf] */
    ngx_plugin_rc_t (*conf_add_path)(ngx_plugin_conf_t *cf, ngx_plugin_str_t path);
    /** (1.7) For a directive whose block is a conditional configuration
     *  (block_context NGX_PLUGIN_CTX_IF, like nginx's `if`): the id of the
     *  block about to be read, for http_enter_block at run time; 0 for any
     *  other directive. The block gets every plugin's object (create_conf
     *  with level NGX_PLUGIN_CTX_IF, merged from the enclosing location's
     *  or server's), so other plugins' directives declared for
     *  NGX_PLUGIN_CTX_IF apply there. [conf] */
    uint32_t (*conf_block_id)(ngx_plugin_conf_t *cf);
    /** (1.7) Makes the request use conditional block `id`'s configuration
     *  from now on (every plugin's object, the host's settings, and its
     *  content handler if one was set there), as nginx's `if` does when
     *  its condition holds. Only in the SERVER_REWRITE and REWRITE phases
     *  and for a block of the request's server. Returns the calling
     *  plugin's own object for the block (its directives there, e.g. the
     *  ones to run next), or NULL when refused. OWNERSHIP: the host's,
     *  alive for the configuration generation. [worker] */
    void *(*http_enter_block)(ngx_plugin_request_t *r, uint32_t id);
    /** (1.8) An idle limit for a relayed connection (relay): the relay
     *  ends, as with an error, once nothing has been read from c for ms
     *  milliseconds (nginx's proxy_read_timeout on an upgraded connection,
     *  the mail proxy's proxy_timeout). 0, the default, means none. Call
     *  it before relay. [worker] */
    ngx_plugin_rc_t (*conn_set_idle)(ngx_plugin_conn_t *c, uint64_t ms);
    /** (1.9) Defines a family of variables: every $prefix<rest> (rest not
     *  empty) is computed by get with rest, as nginx's $http_* or
     *  $upstream_http_*. The prefix must not overlap the host's families
     *  ($http_, $sent_http_, $arg_, $cookie_) or another plugin's; a
     *  variable defined by its whole name wins over a family. [conf] */
    ngx_plugin_rc_t (*conf_define_variable_prefix)(ngx_plugin_conf_t *cf, ngx_plugin_str_t prefix,
                                                   ngx_plugin_prefix_var_pt get, void *data);
    /** (1.10) Starts a subrequest of r for `uri` (a path of r's server,
     *  `internal` locations included) with `args`, as nginx's auth_request
     *  makes one: GET, r's headers, no body, its response kept to the head
     *  and not sent or logged. Return NGX_PLUGIN_AGAIN from the handler:
     *  it is called again once the subrequest has finished. *out is the
     *  subrequest's handle: read its status (http_status), headers
     *  (http_header_out) and variables (http_var) until r finishes. One
     *  at a time (a finished one is replaced); not from a subrequest
     *  (NGX_PLUGIN_INVALID). OWNERSHIP: uri and args copied. [worker] */
    ngx_plugin_rc_t (*http_subrequest)(ngx_plugin_request_t *r, ngx_plugin_str_t uri, ngx_plugin_str_t args,
                                       ngx_plugin_request_t **out);
    /** (1.11) Like http_set_ctx, but the state survives internal redirects
     *  (error_page, X-Accel-Redirect, try_files' last URI, a rewrite's new
     *  location), which end http_set_ctx state, as nginx clears module
     *  contexts: for what nginx keeps on the request itself (the proxy's
     *  $upstream_* variables, as r->upstream_states). `free` runs when
     *  the request finishes, before its http_alloc memory is released.
     *  One slot per plugin. [worker] */
    ngx_plugin_rc_t (*http_set_data)(ngx_plugin_request_t *r, void *data, void (*free_fn)(void *));
    /** (1.11) This plugin's http_set_data state, or NULL. */
    void *(*http_data)(ngx_plugin_request_t *r);
    /** (1.12) The server's connection and request counters, summed over
     *  every worker of every live generation (nginx's stub_status
     *  numbers): fills out[0 .. min(n, NGX_PLUGIN_STAT_COUNT)) in
     *  NGX_PLUGIN_STAT_* order and returns how many it filled (a newer
     *  host may know more). Accepts, handled and requests count since
     *  the server started (kept across reloads); the others are now.
     *  [any] */
    size_t (*stats)(uint64_t *out, size_t n);
    /** (1.13) nginx's ngx_http_gzip_ok: NGX_PLUGIN_OK when r's response
     *  may go out gzip-compressed, else NGX_PLUGIN_DECLINED. The host
     *  decides, once per request, from the client's Accept-Encoding and
     *  the core settings gzip_http_version, gzip_proxied (against the
     *  response headers set so far) and gzip_disable. With
     *  NGX_PLUGIN_GZIP_VARY in flags the response is marked as one that
     *  could be compressed: under gzip_vary on, the host adds
     *  "Vary: Accept-Encoding" (once, whoever marked it). [worker] */
    ngx_plugin_rc_t (*http_gzip_ok)(ngx_plugin_request_t *r, uint32_t flags);
    /** (1.14) This plugin's configuration object for r's current block
     *  (location, or the `if` block entered), as its handlers receive it:
     *  for variable getters and callbacks, which get no conf. NULL if
     *  none. OWNERSHIP: the plugin's, alive for the generation. [worker] */
    void *(*http_conf)(ngx_plugin_request_t *r);
    /** (1.14) The `server_name` arguments of the server block enclosing
     *  the directive being applied, as written ("example.com",
     *  "*.example.org", "~^www\\d+\\."), wherever they stand in the block.
     *  In: *n = room in out (out may be NULL when 0); out: *n = how many
     *  there are (fills at most the room). NOT_FOUND outside a server
     *  block. OWNERSHIP: the strings live as long as cf. [conf] */
    ngx_plugin_rc_t (*conf_server_names)(ngx_plugin_conf_t *cf, ngx_plugin_str_t *out, size_t *n);
} ngx_plugin_host_t;

/** http_gzip_ok flags. */
#define NGX_PLUGIN_GZIP_VARY 0x1

/** Indexes into the stats() array (append-only). */
#define NGX_PLUGIN_STAT_ACTIVE   0 /* open client connections, idle ones included */
#define NGX_PLUGIN_STAT_ACCEPTS  1 /* connections accepted */
#define NGX_PLUGIN_STAT_HANDLED  2 /* accepted and taken on (not dropped at once) */
#define NGX_PLUGIN_STAT_REQUESTS 3 /* client requests (heads begun) */
#define NGX_PLUGIN_STAT_READING  4 /* connections reading a request head */
#define NGX_PLUGIN_STAT_WRITING  5 /* connections serving a request */
#define NGX_PLUGIN_STAT_WAITING  6 /* idle connections (active - reading - writing) */
#define NGX_PLUGIN_STAT_COUNT    7

/** True when the host table `h` is large enough to contain slot `field`
 *  (a plugin built against a newer minor runs on an older host). */
#define NGX_PLUGIN_HOST_HAS(h, field) \
    ((h)->struct_size >= offsetof(ngx_plugin_host_t, field) + sizeof((h)->field))

/* ------------------------------------------------------------------ */
/* The plugin definition: what the plugin provides                     */
/* ------------------------------------------------------------------ */

/**
 * Returned by the entry point. OWNERSHIP: the plugin's; must stay valid
 * and unchanged while the image is loaded (a static const is typical).
 * Append-only, like the host table.
 */
typedef struct ngx_plugin_def_s {
    uint32_t struct_size; /* sizeof(ngx_plugin_def_t) as the plugin knows it */
    uint32_t abi_major;   /* NGX_PLUGIN_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;   /* NGX_PLUGIN_ABI_MINOR the plugin was built with */
    uint32_t min_host_minor; /* oldest host minor it can run on */

    /** Unique plugin name, NUL-terminated ("static", "proxy"). */
    const char *name;
    /** Free-form version, NUL-terminated (may be NULL). */
    const char *version;

    /** Directives, `ndirectives` entries. */
    const ngx_plugin_directive_t *directives;
    size_t ndirectives;

    /**
     * Creates this plugin's configuration object for one block at `level`
     * (an NGX_PLUGIN_CTX_* bit: MAIN once; HTTP once per http {}; SERVER per
     * server {}; LOCATION per location {}; MAIL, MAIL_SERVER likewise).
     * Called [conf] before the block's directives. NULL return = error.
     * NULL function: the plugin has no configuration (conf is NULL).
     */
    void *(*create_conf)(ngx_plugin_conf_t *cf, uint32_t level);
    /**
     * Merges `parent` (the enclosing block's object, already merged) into
     * `child` after the child block is read: unset child values inherit.
     * Called [conf] for SERVER from HTTP, LOCATION from SERVER or the outer
     * LOCATION, MAIL_SERVER from MAIL. Return OK or ERROR after conf_error.
     */
    ngx_plugin_rc_t (*merge_conf)(ngx_plugin_conf_t *cf, uint32_t level, const void *parent,
                                  void *child);
    /** Frees a configuration object when its generation ends. [any] */
    void (*free_conf)(uint32_t level, void *conf);

    /** After the whole configuration is read, in the master. A non-OK
     *  return refuses the configuration (the old generation keeps serving). */
    ngx_plugin_rc_t (*init_cycle)(ngx_plugin_cycle_t *cy, void *main_conf);
    /** In each worker and helper after fork. Non-OK: the process exits. */
    ngx_plugin_rc_t (*init_worker)(ngx_plugin_cycle_t *cy, void *main_conf);
    /** In each worker and helper before it exits. */
    void (*exit_worker)(ngx_plugin_cycle_t *cy, void *main_conf);
    /** In the master when the generation is retired (after reload or at exit).
     *  Release everything init_cycle made: no threads or hooks may remain. */
    void (*fini_cycle)(ngx_plugin_cycle_t *cy, void *main_conf);

    /** HTTP phase handlers, `nhandlers` entries. */
    const ngx_plugin_http_handler_t *handlers;
    size_t nhandlers;
    /** Output filters (NULL = none); run in reverse load order, as nginx. */
    ngx_plugin_header_filter_pt header_filter;
    ngx_plugin_body_filter_pt body_filter;
} ngx_plugin_def_t;

/**
 * The entry point every plugin exports, under NGX_PLUGIN_ENTRY_SYMBOL.
 * Called once per load [conf], before anything else.
 * @param host the host table (valid while the image is loaded)
 * @return the plugin's definition, or NULL to refuse loading (log why).
 */
typedef const ngx_plugin_def_t *(*ngx_plugin_entry_pt)(const ngx_plugin_host_t *host);

#ifdef __cplusplus
}
#endif

#endif /* NGX_PLUGIN_H */

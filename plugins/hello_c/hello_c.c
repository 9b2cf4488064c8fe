/*
 * hello_c -- a content plugin written in C against include/ngx_plugin.h.
 *
 *   load_module modules/hello_c.so;
 *   http { server { listen 8080; hello_c "Hello from C"; } }
 *
 * Answers every request of a server or location where `hello_c` is set
 * with its text and an X-Hello-Variant header (HELLO_VARIANT at build
 * time, so tests can tell two builds apart). `?sleep=MS` delays the answer
 * by blocking the worker: a test fixture for "a slow request in flight",
 * not something a real plugin should do.
 *
 * Build: cc -std=c99 -Wall -Wextra -Werror -fPIC -shared -Wl,-z,defs \
 *           -I include plugins/hello_c/hello_c.c -o hello_c.so
 */

#define _POSIX_C_SOURCE 200809L
#include "ngx_plugin.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef HELLO_VARIANT
#define HELLO_VARIANT "default"
#endif

static const ngx_plugin_host_t *host;

typedef struct {
    char *text; /* NULL: unset (inherit) */
    size_t len;
} hello_conf_t;

static ngx_plugin_str_t str(const char *s) {
    ngx_plugin_str_t r;
    r.data = (const uint8_t *)s;
    r.len = strlen(s);
    return r;
}

static void *hello_create(ngx_plugin_conf_t *cf, uint32_t level) {
    (void)cf;
    (void)level;
    return calloc(1, sizeof(hello_conf_t));
}

static ngx_plugin_rc_t hello_merge(ngx_plugin_conf_t *cf, uint32_t level, const void *parent,
                                   void *child) {
    const hello_conf_t *p = parent;
    hello_conf_t *c = child;
    (void)cf;
    (void)level;
    if (c->text == NULL && p->text != NULL) {
        c->text = malloc(p->len + 1);
        if (c->text == NULL) {
            return NGX_PLUGIN_ERROR;
        }
        memcpy(c->text, p->text, p->len + 1);
        c->len = p->len;
    }
    return NGX_PLUGIN_OK;
}

static void hello_free(uint32_t level, void *conf) {
    hello_conf_t *c = conf;
    (void)level;
    free(c->text);
    free(c);
}

static ngx_plugin_rc_t hello_set(ngx_plugin_conf_t *cf, void *conf, const ngx_plugin_str_t *args,
                                 size_t nargs) {
    hello_conf_t *c = conf;
    (void)nargs;
    if (args[0].len == 0) {
        host->conf_error(cf, str("\"hello_c\" needs a non-empty text"));
        return NGX_PLUGIN_ERROR;
    }
    free(c->text);
    c->text = malloc(args[0].len + 1);
    if (c->text == NULL) {
        return NGX_PLUGIN_ERROR;
    }
    memcpy(c->text, args[0].data, args[0].len);
    c->text[args[0].len] = '\0';
    c->len = args[0].len;
    return NGX_PLUGIN_OK;
}

static long sleep_ms(ngx_plugin_request_t *r) {
    ngx_plugin_str_t args;
    const char *key = "sleep=";
    size_t i, k = strlen(key);
    long ms = 0;
    if (host->http_get(r, NGX_PLUGIN_REQ_ARGS, &args) != NGX_PLUGIN_OK || args.len < k ||
        memcmp(args.data, key, k) != 0) {
        return 0;
    }
    for (i = k; i < args.len && args.data[i] >= '0' && args.data[i] <= '9'; i++) {
        ms = ms * 10 + (args.data[i] - '0');
    }
    return ms > 10000 ? 10000 : ms;
}

static ngx_plugin_rc_t hello_content(ngx_plugin_request_t *r, void *conf) {
    hello_conf_t *c = conf;
    ngx_plugin_buf_t b;
    long ms;
    if (c == NULL || c->text == NULL) {
        return NGX_PLUGIN_DECLINED;
    }
    ms = sleep_ms(r);
    if (ms > 0) {
        struct timespec ts;
        ts.tv_sec = ms / 1000;
        ts.tv_nsec = (ms % 1000) * 1000000L;
        nanosleep(&ts, NULL);
    }
    host->http_set_status(r, 200);
    host->http_header_out_add(r, str("Content-Type"), str("text/plain"));
    host->http_header_out_add(r, str("X-Hello-Variant"), str(HELLO_VARIANT));
    memset(&b, 0, sizeof(b));
    b.data = (const uint8_t *)c->text;
    b.len = c->len;
    b.fd = -1;
    b.flags = NGX_PLUGIN_BUF_LAST;
    return host->http_send_body(r, &b, 1) == NGX_PLUGIN_OK ? NGX_PLUGIN_OK : NGX_PLUGIN_ERROR;
}

static const ngx_plugin_directive_t hello_directives[] = {
    {"hello_c", NGX_PLUGIN_CTX_HTTP | NGX_PLUGIN_CTX_SERVER | NGX_PLUGIN_CTX_LOCATION, 0, 1, 1, 0,
     hello_set},
};

static const ngx_plugin_http_handler_t hello_handlers[] = {
    {NGX_PLUGIN_PHASE_CONTENT, hello_content},
};

static ngx_plugin_def_t hello_def = {
    sizeof(ngx_plugin_def_t),
    NGX_PLUGIN_ABI_MAJOR,
    NGX_PLUGIN_ABI_MINOR,
    0,
    "hello_c",
    HELLO_VARIANT,
    hello_directives,
    sizeof(hello_directives) / sizeof(hello_directives[0]),
    hello_create,
    hello_merge,
    hello_free,
    NULL,
    NULL,
    NULL,
    NULL,
    hello_handlers,
    sizeof(hello_handlers) / sizeof(hello_handlers[0]),
    NULL,
    NULL,
};

__attribute__((visibility("default"))) const ngx_plugin_def_t *
ngx_plugin_entry_v1(const ngx_plugin_host_t *h) {
    if (h == NULL || h->abi_major != NGX_PLUGIN_ABI_MAJOR) {
        return NULL;
    }
    host = h;
    return &hello_def;
}

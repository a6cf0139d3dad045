/*
 * The C harness: drives include/xhttp.h against the built library and the in-repo server.
 *
 *   XH_SERVER_CONFIG   the JSON line printed by `xh serve` (required)
 *   XH_HARNESS_ITERS   iterations per thread of the 8-thread misuse run (default 10000)
 *   XH_HARNESS_MIB     MiB moved each way per mode (default 1)
 *
 * 1. A real transfer in every mode (packet-up, stream-up, stream-one, auto): bytes each
 *    way, SHA-256 of what went up equals SHA-256 of what came back, stats and addresses;
 *    each client's UDP sockets go through a protect callback, and its connection moves
 *    to a new socket (xh_client_network_changed) before the transfer; a latency probe.
 * 2. The misuse suite: bad configs and arguments, NULLs, double close and free, use after
 *    free, handles of the wrong kind and made-up handles, zero-length buffers, huge
 *    timeouts, free racing blocked reads and writes, client free closing its tunnels,
 *    calls from inside the log callback.
 * 3. 8 threads closing, freeing, reading, writing and reopening the same tunnels at
 *    random, then a check that every handle is gone and the runtime threads are joined.
 * 4. Issue 9: a client close or free wakes an open and a probe still connecting to a
 *    silent server; every call raced against a client close or free returns only codes
 *    its comment in xhttp.h lists (documented.h is generated from the header); fork (the
 *    child gets FORKED at once, the parent carries on); calls from a pthread_key
 *    destructor and from an atexit handler.
 *
 *   XH_RACE_ROUNDS     rounds of the close/free races (default 24)
 *
 * Prints one line per failed check and ends with "N passed, N failed"; exits non-zero on
 * any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include "check.h"
#include "sha256.h"
#include "xhttp.h"
#define XH_DOC_BIT(code) (1u << (code))
#include "documented.h" /* generated from xhttp.h by documented.awk */

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *g_server_config;

/* The server's config with "mode":"auto" replaced by mode (caller frees). */
static char *config_for(const char *mode) { return config_with_mode(g_server_config, mode); }

static int server_port(void) {
    const char *p = strstr(g_server_config, "\"port\":");
    return p ? atoi(p + 7) : -1;
}

static xh_client *new_client(const char *mode) { return client_with_mode(g_server_config, mode); }

static xh_tunnel *open_tunnel(xh_client *c) {
    xh_tunnel *t = NULL;
    EXPECT_RC(xh_client_open(c, T_MS, &t), XH_RESULT_OK);
    return t;
}

/* ---------------------------------------------------------------- log callback */

static atomic_long g_log_records;
static atomic_int g_log_reentry_refused;
static atomic_int g_log_reentry_checked;

static void on_log(void *ctx, xh_log_level level, const char *target, const char *message) {
    (void)target;
    atomic_fetch_add((atomic_long *)ctx, 1);
    if (level < XH_LOG_LEVEL_ERROR || level > XH_LOG_LEVEL_TRACE || !message) abort();
    /* Calling back into the library from here is refused, never a deadlock. Checked on the
     * first few records only (each check logs nothing: records from here are dropped). */
    if (atomic_fetch_add(&g_log_reentry_checked, 1) < 3) {
        xh_client *c = NULL;
        int refused = xh_client_new("{}", &c) == XH_RESULT_WRONG_THREAD && c == NULL &&
                      xh_set_log_callback(NULL, NULL, 0) == XH_RESULT_WRONG_THREAD &&
                      xh_client_free(NULL) == XH_RESULT_WRONG_THREAD;
        if (refused) atomic_fetch_add(&g_log_reentry_refused, 1);
    }
}

/* ---------------------------------------------------------------- transfers */

typedef struct {
    xh_tunnel *t;
    size_t size;
    uint64_t seed;
    int half_close;
    uint8_t digest[32];
    xh_result rc;
} writer_job;

static void *writer_main(void *p) {
    writer_job *j = p;
    static _Thread_local uint8_t buf[65536];
    sha256_ctx h;
    sha256_init(&h);
    uint64_t data = j->seed, sizes = j->seed ^ 0x9e3779b97f4a7c15ULL;
    size_t sent = 0;
    j->rc = XH_RESULT_OK;
    while (sent < j->size) {
        size_t n = 1 + (size_t)(next_rand(&sizes) % sizeof buf);
        if (n > j->size - sent) n = j->size - sent;
        fill(&data, buf, n);
        sha256_update(&h, buf, n);
        for (size_t off = 0; off < n;) {
            size_t w = 0;
            xh_result rc = xh_tunnel_write(j->t, buf + off, n - off, T_MS, &w);
            if (rc != XH_RESULT_OK || w == 0 || w > n - off) {
                j->rc = rc != XH_RESULT_OK ? rc : XH_RESULT_OTHER;
                return NULL;
            }
            off += w;
        }
        sent += n;
    }
    if (j->half_close) j->rc = xh_tunnel_shutdown_write(j->t, T_MS);
    sha256_final(&h, j->digest);
    return NULL;
}

/* The protect callback: counts the UDP sockets it is offered (each must be one). */
static int on_protect(void *ctx, int fd) {
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_DGRAM)
        atomic_fetch_add((atomic_int *)ctx, 1);
    return 1;
}

static void transfer(const char *mode, size_t size, uint64_t seed) {
    double start = now_s();
    int half_close = strcmp(mode, "stream-up") == 0 || strcmp(mode, "stream-one") == 0;
    xh_client *c = new_client(mode);
    atomic_int protected_sockets = 0;
    if (c) EXPECT_RC(xh_client_set_protect(c, on_protect, &protected_sockets), XH_RESULT_OK);
    xh_tunnel *t = open_tunnel(c);
    if (!c || !t) return;
    CHECK(atomic_load(&protected_sockets) == 1);
    /* A network change before the transfer: it runs on the moved connection. */
    uint32_t moved = 0;
    EXPECT_RC(xh_client_network_changed(c, &moved), XH_RESULT_OK);
    CHECK(moved == 1 && atomic_load(&protected_sockets) == 2);
    /* The latency probe: its own (protected) connection, the pool untouched. */
    xh_probe probe = {0};
    EXPECT_RC(xh_client_probe(c, T_MS, &probe), XH_RESULT_OK);
    CHECK(probe.connect_us > 0 && probe.round_trip_us > 0);
    CHECK(atomic_load(&protected_sockets) == 3);

    char addr[XH_ADDR_BUF_LEN], want_peer[64];
    size_t alen = 0;
    EXPECT_RC(xh_tunnel_peer_addr(t, addr, sizeof addr, &alen), XH_RESULT_OK);
    snprintf(want_peer, sizeof want_peer, "127.0.0.1:%d", server_port());
    CHECK(strcmp(addr, want_peer) == 0 && alen == strlen(want_peer));
    EXPECT_RC(xh_tunnel_local_addr(t, addr, sizeof addr, &alen), XH_RESULT_OK);
    CHECK(alen > 2 && strncmp(addr, "0.0.0.0", 7) != 0 && strcmp(addr + alen - 2, ":0") != 0);

    writer_job job = {.t = t, .size = size, .seed = seed, .half_close = half_close};
    pthread_t w;
    CHECK(pthread_create(&w, NULL, writer_main, &job) == 0);

    sha256_ctx h;
    sha256_init(&h);
    static uint8_t buf[32768];
    size_t got = 0;
    xh_result rc = XH_RESULT_OK;
    while (got < size) {
        size_t n = 0;
        rc = xh_tunnel_read(t, buf, sizeof buf, T_MS, &n);
        if (rc != XH_RESULT_OK || n == 0) break;
        sha256_update(&h, buf, n);
        got += n;
    }
    EXPECT_RC(rc, XH_RESULT_OK);
    pthread_join(w, NULL);
    EXPECT_RC(job.rc, XH_RESULT_OK);
    CHECK(got == size);
    uint8_t down[32];
    sha256_final(&h, down);
    char up_hex[65], down_hex[65];
    sha256_hex(job.digest, up_hex);
    sha256_hex(down, down_hex);
    CHECK(strcmp(up_hex, down_hex) == 0);
    if (half_close) {
        size_t n = 99;
        EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, T_MS, &n), XH_RESULT_OK);
        CHECK(n == 0); /* end of stream after the echo */
    }

    xh_stats s = {0};
    EXPECT_RC(xh_client_stats(c, &s), XH_RESULT_OK);
    CHECK(s.bytes_up == size && s.bytes_down == size);
    CHECK(s.open_tunnels == 1 && s.live_connections >= 1);
    EXPECT_RC(xh_tunnel_close(t), XH_RESULT_OK);
    EXPECT_RC(xh_client_stats(c, &s), XH_RESULT_OK);
    CHECK(s.open_tunnels == 0);
    EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_client_set_protect(c, NULL, NULL), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    printf("transfer %-10s ok %zu bytes each way, sha256 %.16s..., %.2f s\n", mode, size, up_hex,
           now_s() - start);
}

/* ---------------------------------------------------------------- misuse, one by one */

static void bad_configs(void) {
    xh_client *sentinel = (xh_client *)(uintptr_t)0x5a5a5a5a;
    xh_client *c = sentinel;
    char err[512];

    EXPECT_RC(xh_client_new(NULL, &c), XH_RESULT_NULL_ARGUMENT);
    CHECK(c == sentinel);
    EXPECT_RC(xh_client_new("\xff\xfe{}", &c), XH_RESULT_INVALID_ARGUMENT);
    last_error(err, sizeof err);
    CHECK(strstr(err, "UTF-8") != NULL);
    EXPECT_RC(xh_client_new("{not json", &c), XH_RESULT_INVALID_CONFIG);
    last_error(err, sizeof err);
    CHECK(strstr(err, "JSON") != NULL);
    EXPECT_RC(xh_client_new("", &c), XH_RESULT_INVALID_CONFIG);
    EXPECT_RC(xh_client_new("[]", &c), XH_RESULT_INVALID_CONFIG);
    EXPECT_RC(xh_client_new("{}", &c), XH_RESULT_INVALID_CONFIG);
    last_error(err, sizeof err);
    CHECK(strstr(err, "address") != NULL);
    EXPECT_RC(xh_client_new("{\"address\":\"x\",\"port\":70000}", &c), XH_RESULT_INVALID_CONFIG);
    last_error(err, sizeof err);
    CHECK(strstr(err, "port") != NULL);
    CHECK(c == sentinel); /* never written on failure */

    char *cfg = config_for("stream-up");
    EXPECT_RC(xh_client_new(cfg, NULL), XH_RESULT_NULL_ARGUMENT);
    free(cfg);
}

static void messages_and_last_error(void) {
    CHECK(xh_version() != NULL && strlen(xh_version()) > 0);
    for (unsigned code = 0; code <= XH_RESULT_PANIC; code++) {
        const char *m = xh_result_message(code);
        CHECK(m != NULL && strlen(m) > 0 && strcmp(m, "unknown result code") != 0);
    }
    CHECK(strcmp(xh_result_message(12345), "unknown result code") == 0);
    CHECK(strcmp(xh_result_message(UINT32_MAX), "unknown result code") == 0);

    xh_client *c = NULL;
    EXPECT_RC(xh_client_new("{}", &c), XH_RESULT_INVALID_CONFIG);
    size_t full = 0, n = 0;
    EXPECT_RC(xh_last_error(NULL, 0, &full), XH_RESULT_OK); /* length query */
    CHECK(full > 10);
    char small[8];
    memset(small, 'x', sizeof small);
    EXPECT_RC(xh_last_error(small, sizeof small, &n), XH_RESULT_OK);
    CHECK(n == full && strlen(small) == sizeof small - 1); /* cut, NUL-terminated */
    EXPECT_RC(xh_last_error(NULL, 5, &n), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_last_error(small, sizeof small, NULL), XH_RESULT_NULL_ARGUMENT);
    /* Those failures did not replace the message. */
    EXPECT_RC(xh_last_error(NULL, 0, &n), XH_RESULT_OK);
    CHECK(n == full);
}

static void handle_misuse(void) {
    xh_client *c = new_client("stream-up");
    xh_tunnel *t = open_tunnel(c);
    uint8_t buf[64];
    size_t n = 777;
    char addr[XH_ADDR_BUF_LEN];
    xh_stats s;

    /* NULLs: ignored by close/free, refused elsewhere. */
    EXPECT_RC(xh_client_close(NULL), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(NULL), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_close(NULL), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_free(NULL), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_read(NULL, buf, sizeof buf, 0, &n), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_read(t, NULL, sizeof buf, 0, &n), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, 0, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_write(t, NULL, 5, 0, &n), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_write(t, buf, 5, 0, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_shutdown_write(NULL, 0), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_stats(NULL, &s), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_stats(c, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_open(c, T_MS, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_local_addr(t, NULL, 10, &n), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tunnel_peer_addr(t, addr, sizeof addr, NULL), XH_RESULT_NULL_ARGUMENT);
    CHECK(n == 777);
    xh_probe probe = {.connect_us = 777, .round_trip_us = 777};
    uint32_t moved = 777;
    EXPECT_RC(xh_client_probe(NULL, T_MS, &probe), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_probe(c, T_MS, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_set_protect(NULL, on_protect, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_network_changed(NULL, &moved), XH_RESULT_NULL_ARGUMENT);
    CHECK(probe.connect_us == 777 && probe.round_trip_us == 777 && moved == 777);
    /* Removing the log callback never fails, whatever max_level says. */
    EXPECT_RC(xh_set_log_callback(NULL, NULL, 99), XH_RESULT_OK);

    /* Zero-length and too-small buffers. */
    EXPECT_RC(xh_tunnel_read(t, buf, 0, 0, &n), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_tunnel_write(t, buf, 0, 0, &n), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_tunnel_local_addr(t, addr, 0, &n), XH_RESULT_INVALID_ARGUMENT);
    memset(addr, 'q', sizeof addr);
    EXPECT_RC(xh_tunnel_peer_addr(t, addr, 4, &n), XH_RESULT_BUFFER_TOO_SMALL);
    CHECK(addr[0] == 'q' && n == 777);
    EXPECT_RC(xh_set_log_callback(on_log, &g_log_records, 6), XH_RESULT_INVALID_ARGUMENT);

    /* Timeouts: 0 does not wait; a huge one does not overflow (close ends it, below). */
    double t0 = now_s();
    EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, 0, &n), XH_RESULT_TIMEOUT);
    EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, 20, &n), XH_RESULT_TIMEOUT);
    CHECK(now_s() - t0 < 5.0);
    CHECK(n == 777);

    /* Wrong kinds and made-up handles: refused, never dereferenced. */
    xh_client *t_as_c = (xh_client *)(void *)t;
    xh_tunnel *c_as_t = (xh_tunnel *)(void *)c;
    int on_stack = 42;
    EXPECT_RC(xh_client_stats(t_as_c, &s), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_open(t_as_c, 0, &t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_close(t_as_c), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_free(t_as_c), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_read(c_as_t, buf, sizeof buf, 0, &n), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_close(c_as_t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_free(c_as_t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_read((xh_tunnel *)(void *)&on_stack, buf, sizeof buf, 0, &n), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_free((xh_tunnel *)(uintptr_t)0x1234567), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_free((xh_client *)(uintptr_t)UINTPTR_MAX), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_free((xh_client *)(void *)&on_stack), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_probe(t_as_c, T_MS, &probe), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_set_protect(t_as_c, NULL, NULL), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_network_changed(t_as_c, &moved), XH_RESULT_INVALID_HANDLE);
    CHECK(probe.connect_us == 777 && moved == 777);
    /* Both real handles are untouched by all that. */
    EXPECT_RC(xh_client_stats(c, &s), XH_RESULT_OK);
    CHECK(s.open_tunnels == 1);

    /* Close twice, use after close, free twice, use after free. */
    EXPECT_RC(xh_tunnel_close(t), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_close(t), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, T_MS, &n), XH_RESULT_CLOSED);
    EXPECT_RC(xh_tunnel_write(t, buf, 10, T_MS, &n), XH_RESULT_CLOSED);
    EXPECT_RC(xh_tunnel_shutdown_write(t, T_MS), XH_RESULT_CLOSED);
    EXPECT_RC(xh_tunnel_local_addr(t, addr, sizeof addr, &n), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_free(t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_close(t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, T_MS, &n), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_write(t, buf, 10, T_MS, &n), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_peer_addr(t, addr, sizeof addr, &n), XH_RESULT_INVALID_HANDLE);

    /* A freed handle stays dead after new handles are issued. */
    xh_tunnel *t2 = open_tunnel(c);
    CHECK(t2 != t);
    EXPECT_RC(xh_tunnel_read(t, buf, sizeof buf, 0, &n), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tunnel_free(t2), XH_RESULT_OK);

    EXPECT_RC(xh_client_close(c), XH_RESULT_OK);
    EXPECT_RC(xh_client_close(c), XH_RESULT_OK);
    EXPECT_RC(xh_client_open(c, T_MS, &t2), XH_RESULT_CLOSED);
    EXPECT_RC(xh_client_probe(c, T_MS, &probe), XH_RESULT_CLOSED);
    EXPECT_RC(xh_client_network_changed(c, &moved), XH_RESULT_OK);
    CHECK(moved == 0); /* a closed client has nothing to move */
    EXPECT_RC(xh_client_stats(c, &s), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_close(c), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_stats(c, &s), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_open(c, T_MS, &t2), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_probe(c, T_MS, &probe), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_set_protect(c, on_protect, NULL), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_network_changed(c, &moved), XH_RESULT_INVALID_HANDLE);
    CHECK(probe.connect_us == 777 && moved == 0);
}

typedef struct {
    xh_tunnel *t;
    int write; /* 0: block in read, 1: block in write */
    xh_result rc;
    double returned_at;
} blocked_job;

static void *blocked_main(void *p) {
    blocked_job *j = p;
    static _Thread_local uint8_t buf[65536];
    size_t n = 0;
    if (j->write) {
        memset(buf, 7, sizeof buf);
        /* Nobody reads the echo, so the upload fills up and this blocks. */
        do {
            j->rc = xh_tunnel_write(j->t, buf, sizeof buf, XH_TIMEOUT_INFINITE, &n);
        } while (j->rc == XH_RESULT_OK);
    } else {
        j->rc = xh_tunnel_read(j->t, buf, sizeof buf, XH_TIMEOUT_INFINITE - 1, &n);
    }
    j->returned_at = now_s();
    return NULL;
}

/* A read or write blocked on one thread while another frees (or closes) the tunnel. */
static void free_races_blocked_call(int write, int use_close) {
    xh_client *c = new_client(write ? "stream-one" : "packet-up");
    xh_tunnel *t = open_tunnel(c);
    blocked_job j = {.t = t, .write = write, .rc = XH_RESULT_OK};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_main, &j) == 0);
    sleep_ms(write ? 1500 : 300); /* let it block */
    double at = now_s();
    if (use_close) {
        EXPECT_RC(xh_tunnel_close(t), XH_RESULT_OK);
    } else {
        EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
    }
    pthread_join(th, NULL);
    EXPECT_RC(j.rc, XH_RESULT_CLOSED);
    CHECK(j.returned_at - at < 5.0);
    EXPECT_RC(xh_tunnel_free(t), use_close ? XH_RESULT_OK : XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
}

/* Freeing a client closes its tunnels, whose handles answer "closed" until freed; the
 * tunnels of another client are unaffected. */
static void client_free_closes_its_tunnels(void) {
    xh_client *a = new_client("stream-up");
    xh_client *b = new_client("packet-up");
    xh_tunnel *ta[3];
    for (int i = 0; i < 3; i++) ta[i] = open_tunnel(a);
    xh_tunnel *tb = open_tunnel(b);

    blocked_job j = {.t = ta[0], .write = 0, .rc = XH_RESULT_OK};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_main, &j) == 0);
    sleep_ms(200);
    EXPECT_RC(xh_client_free(a), XH_RESULT_OK);
    pthread_join(th, NULL);
    EXPECT_RC(j.rc, XH_RESULT_CLOSED);

    uint8_t buf[256];
    size_t n = 0;
    char addr[XH_ADDR_BUF_LEN];
    xh_stats s;
    for (int i = 0; i < 3; i++) {
        EXPECT_RC(xh_tunnel_read(ta[i], buf, sizeof buf, T_MS, &n), XH_RESULT_CLOSED);
        EXPECT_RC(xh_tunnel_write(ta[i], buf, sizeof buf, T_MS, &n), XH_RESULT_CLOSED);
        EXPECT_RC(xh_tunnel_shutdown_write(ta[i], T_MS), XH_RESULT_CLOSED);
        EXPECT_RC(xh_tunnel_local_addr(ta[i], addr, sizeof addr, &n), XH_RESULT_OK);
        EXPECT_RC(xh_tunnel_close(ta[i]), XH_RESULT_OK);
        /* A tunnel of the freed client passed as a client: refused. */
        EXPECT_RC(xh_client_stats((xh_client *)(void *)ta[i], &s), XH_RESULT_INVALID_HANDLE);
    }
    EXPECT_RC(xh_client_open(a, T_MS, &ta[0]), XH_RESULT_INVALID_HANDLE);

    /* Client b and its tunnel still work. */
    memset(buf, 'b', sizeof buf);
    EXPECT_RC(xh_tunnel_write(tb, buf, sizeof buf, T_MS, &n), XH_RESULT_OK);
    CHECK(n == sizeof buf);
    size_t got = 0;
    while (got < sizeof buf) {
        xh_result rc = xh_tunnel_read(tb, buf, sizeof buf - got, T_MS, &n);
        EXPECT_RC(rc, XH_RESULT_OK);
        if (rc != XH_RESULT_OK || n == 0) break;
        got += n;
    }
    CHECK(got == sizeof buf && buf[0] == 'b');

    for (int i = 0; i < 3; i++) {
        EXPECT_RC(xh_tunnel_free(ta[i]), XH_RESULT_OK);
        EXPECT_RC(xh_tunnel_free(ta[i]), XH_RESULT_INVALID_HANDLE);
    }
    EXPECT_RC(xh_tunnel_free(tb), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(b), XH_RESULT_OK);
}

/* A write with timeout 0 on a full upload queues what fits and says how much. */
static void partial_writes(void) {
    xh_client *c = new_client("stream-one");
    xh_tunnel *t = open_tunnel(c);
    size_t len = 16u << 20, n = 0, total = 0;
    uint8_t *big = calloc(len, 1);
    if (!big) abort();
    xh_result rc = XH_RESULT_OK;
    for (int i = 0; i < 200 && rc == XH_RESULT_OK; i++) {
        n = 0;
        rc = xh_tunnel_write(t, big, len, 0, &n);
        if (rc == XH_RESULT_OK) {
            CHECK(n > 0 && n <= len);
            total += n;
        }
    }
    /* Nobody reads the echo: sooner or later nothing fits and 0 ms means no wait. */
    EXPECT_RC(rc, XH_RESULT_TIMEOUT);
    CHECK(total > 0);
    rc = xh_tunnel_write(t, big, len, 50, &n);
    CHECK(rc == XH_RESULT_TIMEOUT || (rc == XH_RESULT_OK && n < len));
    free(big);
    EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
}

/* ---------------------------------------------------------------- 8 threads at random */

#define SLOTS 16
#define THREADS 8
static _Atomic(uintptr_t) g_slot[SLOTS];
static xh_client *g_stress_client[2];
static long g_iters;
static atomic_long g_unexpected;
static atomic_long g_opens;
static atomic_long g_ops[16];

static int allowed(xh_result rc, unsigned mask) { return rc < 32 && ((mask >> rc) & 1u); }
#define BIT(r) (1u << (r))

/* A tunnel may fail on its own (the server or the connection under it gave up): a
 * documented result for the data calls, counted and shown, not a misuse failure. */
#define FAILED (BIT(XH_RESULT_REQUEST_FAILED) | BIT(XH_RESULT_SERVER_STATUS))
static atomic_long g_tunnel_failures;

static xh_result note_failure(xh_result rc) {
    if (allowed(rc, FAILED) && atomic_fetch_add(&g_tunnel_failures, 1) < 3) {
        char err[512];
        last_error(err, sizeof err);
        fprintf(stderr, "stress: note, a tunnel failed: %s\n", err);
    }
    return rc;
}

static void unexpected(const char *op, xh_result rc) {
    char err[512];
    last_error(err, sizeof err);
    if (atomic_fetch_add(&g_unexpected, 1) < 20)
        fprintf(stderr, "stress: %s returned %u (%s): %s\n", op, (unsigned)rc, xh_result_message(rc), err);
}
#define STRESS_EXPECT(op, call, mask)                  \
    do {                                               \
        xh_result rc_ = (call);                        \
        if (!allowed(rc_, (mask))) unexpected(op, rc_); \
    } while (0)

typedef struct {
    int id;
    uint64_t rng;
} stress_job;

static void *stress_main(void *p) {
    stress_job *j = p;
    uint8_t buf[512];
    char addr[XH_ADDR_BUF_LEN];
    size_t n;
    xh_stats s;
    const unsigned live = BIT(XH_RESULT_OK) | BIT(XH_RESULT_CLOSED) | BIT(XH_RESULT_INVALID_HANDLE);
    memset(buf, j->id, sizeof buf);
    for (long i = 0; i < g_iters; i++) {
        if (j->id == 0 && i == g_iters / 2) {
            /* Half-way, one client goes with all its tunnels while the others use them. */
            STRESS_EXPECT("client_free", xh_client_free(g_stress_client[1]), BIT(XH_RESULT_OK));
        }
        unsigned slot = (unsigned)(next_rand(&j->rng) % SLOTS);
        xh_tunnel *t = (xh_tunnel *)atomic_load(&g_slot[slot]);
        unsigned op = (unsigned)(next_rand(&j->rng) % 100);
        atomic_fetch_add(&g_ops[op / 10], 1);
        if (op < 25) {
            STRESS_EXPECT("read(0)", note_failure(xh_tunnel_read(t, buf, sizeof buf, 0, &n)),
                          live | BIT(XH_RESULT_TIMEOUT) | FAILED);
        } else if (op < 30) {
            STRESS_EXPECT("read(2)", note_failure(xh_tunnel_read(t, buf, sizeof buf, 2, &n)),
                          live | BIT(XH_RESULT_TIMEOUT) | FAILED);
        } else if (op < 50) {
            STRESS_EXPECT("write", note_failure(xh_tunnel_write(t, buf, 1 + i % sizeof buf, 0, &n)),
                          live | BIT(XH_RESULT_TIMEOUT) | BIT(XH_RESULT_WRITE_SHUTDOWN) | FAILED);
        } else if (op < 53) {
            STRESS_EXPECT("shutdown_write", note_failure(xh_tunnel_shutdown_write(t, 0)),
                          live | BIT(XH_RESULT_TIMEOUT) | FAILED);
        } else if (op < 60) {
            STRESS_EXPECT("close", xh_tunnel_close(t), BIT(XH_RESULT_OK) | BIT(XH_RESULT_INVALID_HANDLE));
        } else if (op < 67) {
            STRESS_EXPECT("free", xh_tunnel_free(t), BIT(XH_RESULT_OK) | BIT(XH_RESULT_INVALID_HANDLE));
        } else if (op < 72) {
            STRESS_EXPECT("peer_addr", xh_tunnel_peer_addr(t, addr, sizeof addr, &n),
                          BIT(XH_RESULT_OK) | BIT(XH_RESULT_INVALID_HANDLE));
        } else if (op < 77) {
            xh_client *c = g_stress_client[next_rand(&j->rng) % 2];
            STRESS_EXPECT("stats", xh_client_stats(c, &s), BIT(XH_RESULT_OK) | BIT(XH_RESULT_INVALID_HANDLE));
        } else if (op < 80) {
            /* Wrong kinds, both ways. */
            STRESS_EXPECT("tunnel as client", xh_client_stats((xh_client *)(void *)t, &s),
                          BIT(XH_RESULT_INVALID_HANDLE));
            xh_tunnel *ct = (xh_tunnel *)(void *)g_stress_client[i % 2];
            STRESS_EXPECT("client as tunnel", xh_tunnel_read(ct, buf, sizeof buf, 0, &n),
                          BIT(XH_RESULT_INVALID_HANDLE));
        } else {
            /* Reopen the slot if its tunnel was freed (by anyone). */
            xh_result probe = xh_tunnel_local_addr(t, addr, sizeof addr, &n);
            if (probe == XH_RESULT_OK) continue;
            if (probe != XH_RESULT_INVALID_HANDLE) unexpected("probe", probe);
            xh_client *c = g_stress_client[next_rand(&j->rng) % 2];
            xh_tunnel *nt = NULL;
            xh_result rc = note_failure(xh_client_open(c, T_MS, &nt));
            if (rc != XH_RESULT_OK) {
                if (!allowed(rc, BIT(XH_RESULT_CLOSED) | BIT(XH_RESULT_INVALID_HANDLE) | FAILED))
                    unexpected("open", rc);
                continue;
            }
            atomic_fetch_add(&g_opens, 1);
            uintptr_t expected = (uintptr_t)t;
            if (!atomic_compare_exchange_strong(&g_slot[slot], &expected, (uintptr_t)nt)) {
                STRESS_EXPECT("free lost race", xh_tunnel_free(nt), BIT(XH_RESULT_OK));
            }
        }
    }
    return NULL;
}

static void stress(void) {
    double start = now_s();
    g_stress_client[0] = new_client("stream-up");
    g_stress_client[1] = new_client("packet-up");
    for (int i = 0; i < SLOTS; i++) atomic_store(&g_slot[i], (uintptr_t)open_tunnel(g_stress_client[i % 2]));
    pthread_t th[THREADS];
    stress_job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i].id = i;
        jobs[i].rng = 0x1234567ULL * (uint64_t)(i + 1);
        CHECK(pthread_create(&th[i], NULL, stress_main, &jobs[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    CHECK(atomic_load(&g_unexpected) == 0);
    for (int i = 0; i < SLOTS; i++) {
        xh_result rc = xh_tunnel_free((xh_tunnel *)atomic_load(&g_slot[i]));
        CHECK(rc == XH_RESULT_OK || rc == XH_RESULT_INVALID_HANDLE);
    }
    EXPECT_RC(xh_client_free(g_stress_client[1]), XH_RESULT_INVALID_HANDLE); /* freed half-way */
    EXPECT_RC(xh_client_free(g_stress_client[0]), XH_RESULT_OK);
    printf("stress %d threads x %ld iterations: %ld reopens, %ld unexpected results, %ld calls on failed "
           "tunnels, %.2f s\n",
           THREADS, g_iters, atomic_load(&g_opens), atomic_load(&g_unexpected), atomic_load(&g_tunnel_failures),
           now_s() - start);
}

/* ---------------------------------------------------------------- issue 9: wake-ups */

/* The server's config with another port (caller frees). */
static char *config_with_port(const char *mode, int port) {
    char *cfg = config_for(mode);
    const char *key = "\"port\":";
    char *at = strstr(cfg, key);
    if (!at) abort();
    char *end = at + strlen(key);
    while (*end >= '0' && *end <= '9') end++;
    size_t len = strlen(cfg) + 16;
    char *out = malloc(len);
    if (!out) abort();
    snprintf(out, len, "%.*s%s%d%s", (int)(at - cfg), cfg, key, port, end);
    free(cfg);
    return out;
}

typedef struct {
    xh_client *c;
    int probe; /* 0: open, 1: probe */
    xh_result rc;
    double returned_at;
} connect_job;

static void *connect_main(void *p) {
    connect_job *j = p;
    if (j->probe) {
        xh_probe pr;
        j->rc = xh_client_probe(j->c, XH_TIMEOUT_INFINITE, &pr);
    } else {
        xh_tunnel *t = NULL;
        j->rc = xh_client_open(j->c, XH_TIMEOUT_INFINITE, &t);
        if (j->rc == XH_RESULT_OK) xh_tunnel_free(t);
    }
    j->returned_at = now_s();
    return NULL;
}

/* An open and a probe with no timeout against a server that never answers (a UDP port
 * nobody reads): a close or free of the client wakes both at once with CLOSED, instead of
 * after QUIC's idle timeout. */
static void close_wakes_connecting_calls(int use_free) {
    int silent = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    CHECK(silent >= 0 && bind(silent, (struct sockaddr *)&a, sizeof a) == 0 &&
          getsockname(silent, (struct sockaddr *)&a, &alen) == 0);
    char *cfg = config_with_port("stream-up", ntohs(a.sin_port));
    xh_client *c = NULL;
    EXPECT_RC(xh_client_new(cfg, &c), XH_RESULT_OK);
    free(cfg);
    connect_job jobs[2] = {{.c = c, .probe = 0}, {.c = c, .probe = 1}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, connect_main, &jobs[i]) == 0);
    sleep_ms(500); /* both are waiting for the handshake now */
    double at = now_s();
    EXPECT_RC(use_free ? xh_client_free(c) : xh_client_close(c), XH_RESULT_OK);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        EXPECT_RC(jobs[i].rc, XH_RESULT_CLOSED);
        CHECK(jobs[i].returned_at - at < 3.0);
    }
    if (!use_free) EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    close(silent);
    printf("%s wakes a connecting open and probe: %.3f s, %.3f s\n", use_free ? "client_free" : "client_close",
           jobs[0].returned_at - at, jobs[1].returned_at - at);
}

/* ---------------------------------------------------------------- issue 9: documented codes */

/* Every call raced against a client close or free returns only codes its comment in
 * xhttp.h lists (documented.h is generated from the header by documented.awk). */
enum { R_OPEN, R_PROBE, R_STATS, R_PROTECT, R_NETWORK, R_READ, R_WRITE, R_SHUTDOWN, R_LOCAL, R_PEER, R_OPS };
static const char *const race_names[R_OPS] = {"xh_client_open",  "xh_client_probe",   "xh_client_stats",
                                              "xh_client_set_protect", "xh_client_network_changed",
                                              "xh_tunnel_read",  "xh_tunnel_write",   "xh_tunnel_shutdown_write",
                                              "xh_tunnel_local_addr", "xh_tunnel_peer_addr"};
static const unsigned race_doc[R_OPS] = {DOC_xh_client_open,       DOC_xh_client_probe,   DOC_xh_client_stats,
                                         DOC_xh_client_set_protect, DOC_xh_client_network_changed,
                                         DOC_xh_tunnel_read,        DOC_xh_tunnel_write,   DOC_xh_tunnel_shutdown_write,
                                         DOC_xh_tunnel_local_addr,  DOC_xh_tunnel_peer_addr};
static atomic_long race_seen[R_OPS][32];
static atomic_long race_undocumented;
static atomic_int race_protected;

typedef struct {
    int op;
    xh_client *c;
    xh_tunnel *t;
    atomic_int *stop;
} race_job;

static void *race_main(void *p) {
    race_job *j = p;
    uint8_t buf[4096];
    char addr[XH_ADDR_BUF_LEN];
    memset(buf, 'r', sizeof buf);
    for (unsigned i = 0, after = 0; after < 3; i++) {
        if (atomic_load(j->stop)) after++;
        size_t n = 0;
        xh_result rc;
        switch (j->op) {
        case R_OPEN: {
            xh_tunnel *t = NULL;
            rc = xh_client_open(j->c, T_MS, &t);
            if (rc == XH_RESULT_OK) xh_tunnel_free(t);
            break;
        }
        case R_PROBE: {
            xh_probe pr;
            rc = xh_client_probe(j->c, T_MS, &pr);
            break;
        }
        case R_STATS: {
            xh_stats s;
            rc = xh_client_stats(j->c, &s);
            break;
        }
        case R_PROTECT:
            rc = xh_client_set_protect(j->c, i % 2 ? NULL : on_protect, &race_protected);
            break;
        case R_NETWORK: {
            uint32_t moved;
            rc = xh_client_network_changed(j->c, &moved);
            break;
        }
        case R_READ:
            rc = xh_tunnel_read(j->t, buf, sizeof buf, 20, &n);
            break;
        case R_WRITE:
            rc = xh_tunnel_write(j->t, buf, sizeof buf, 20, &n);
            break;
        case R_SHUTDOWN:
            rc = xh_tunnel_shutdown_write(j->t, 20);
            break;
        case R_LOCAL:
            rc = xh_tunnel_local_addr(j->t, addr, sizeof addr, &n);
            break;
        default:
            rc = xh_tunnel_peer_addr(j->t, addr, sizeof addr, &n);
            break;
        }
        atomic_fetch_add(&race_seen[j->op][rc < 32 ? rc : 31], 1);
        if (!(rc < 32 && ((race_doc[j->op] >> rc) & 1u))) {
            char err[512];
            last_error(err, sizeof err);
            if (atomic_fetch_add(&race_undocumented, 1) < 10)
                fprintf(stderr, "FAIL %s returned %u (%s), not in its documented list: %s\n",
                        race_names[j->op], (unsigned)rc, xh_result_message(rc), err);
        }
        if (j->op == R_SHUTDOWN) sleep_ms(1);
    }
    return NULL;
}

static void documented_codes_under_close_races(int rounds) {
    double start = now_s();
    const char *modes[] = {"packet-up", "stream-up", "stream-one"};
    uint64_t rng = 0x51ce;
    for (int r = 0; r < rounds; r++) {
        xh_client *c = new_client(modes[r % 3]);
        /* Two tunnels: the shutdown races use one, the rest the other. */
        xh_tunnel *t = open_tunnel(c), *ts = open_tunnel(c);
        atomic_int stop = 0;
        race_job jobs[R_OPS];
        pthread_t th[R_OPS];
        for (int op = 0; op < R_OPS; op++) {
            jobs[op] = (race_job){.op = op, .c = c, .t = op == R_SHUTDOWN ? ts : t, .stop = &stop};
            CHECK(pthread_create(&th[op], NULL, race_main, &jobs[op]) == 0);
        }
        sleep_ms(20 + (long)(next_rand(&rng) % 80));
        int use_free = r % 2;
        EXPECT_RC(use_free ? xh_client_free(c) : xh_client_close(c), XH_RESULT_OK);
        sleep_ms(30);
        atomic_store(&stop, 1);
        for (int op = 0; op < R_OPS; op++) pthread_join(th[op], NULL);
        EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
        EXPECT_RC(xh_tunnel_free(ts), XH_RESULT_OK);
        EXPECT_RC(xh_client_free(c), use_free ? XH_RESULT_INVALID_HANDLE : XH_RESULT_OK);
    }
    CHECK(atomic_load(&race_undocumented) == 0);
    printf("documented codes under close/free races, %d rounds, %.2f s:\n", rounds, now_s() - start);
    for (int op = 0; op < R_OPS; op++) {
        printf("  %-26s", race_names[op]);
        for (int rc = 0; rc < 32; rc++)
            if (atomic_load(&race_seen[op][rc])) printf(" %s=%ld", xh_result_message((uint32_t)rc), atomic_load(&race_seen[op][rc]));
        printf("\n");
    }
}

/* ---------------------------------------------------------------- issue 9: fork */

/* Echoes `len` bytes through t and checks them. */
static int echo_ok(xh_tunnel *t, size_t len, uint8_t seed) {
    uint8_t out[4096], in[4096];
    size_t n = 0, got = 0;
    if (len > sizeof out) return 0;
    memset(out, seed, len);
    if (xh_tunnel_write(t, out, len, T_MS, &n) != XH_RESULT_OK || n != len) return 0;
    while (got < len) {
        if (xh_tunnel_read(t, in + got, len - got, T_MS, &n) != XH_RESULT_OK || n == 0) return 0;
        got += n;
    }
    return memcmp(in, out, len) == 0;
}

/* A child made by fork() while the parent has a client and a tunnel gets XH_RESULT_FORKED
 * at once from every call that needs the runtime, frees inherited handles at once without
 * touching them, and the parent's tunnel and client carry on. */
static void fork_rule(void) {
    xh_client *c = new_client("stream-up");
    xh_tunnel *t = open_tunnel(c);
    CHECK(echo_ok(t, 1000, 'a'));
    char *cfg = config_for("stream-up");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        double t0 = now_s();
        xh_client *c2 = NULL;
        xh_tunnel *t2 = NULL;
        uint8_t buf[16] = {0};
        size_t n = 0;
        xh_stats s;
        xh_probe pr;
        char err[512];
        bad |= (xh_client_new(cfg, &c2) != XH_RESULT_FORKED || c2 != NULL) << 0;
        last_error(err, sizeof err);
        bad |= (strstr(err, "fork") == NULL) << 1;
        bad |= (xh_client_open(c, T_MS, &t2) != XH_RESULT_FORKED || t2 != NULL) << 2;
        bad |= (xh_client_probe(c, T_MS, &pr) != XH_RESULT_FORKED) << 3;
        bad |= (xh_client_stats(c, &s) != XH_RESULT_FORKED) << 4;
        bad |= (xh_tunnel_write(t, buf, sizeof buf, T_MS, &n) != XH_RESULT_FORKED) << 5;
        bad |= (xh_tunnel_read(t, buf, sizeof buf, T_MS, &n) != XH_RESULT_FORKED) << 6;
        bad |= (xh_set_log_callback(on_log, &g_log_records, XH_LOG_LEVEL_DEBUG) != XH_RESULT_FORKED) << 7;
        bad |= (xh_set_log_callback(NULL, NULL, 0) != XH_RESULT_OK) << 8;
        bad |= (xh_tunnel_close(t) != XH_RESULT_OK || xh_tunnel_free(t) != XH_RESULT_OK) << 9;
        bad |= (xh_client_close(c) != XH_RESULT_OK || xh_client_free(c) != XH_RESULT_OK) << 10;
        bad |= (now_s() - t0 > 1.0) << 11; /* no waits: nothing of the parent's is touched */
        if (bad) fprintf(stderr, "fork child: checks failed, mask %#x (%s)\n", (unsigned)bad, err);
        free(cfg);
        /* Ends by exec, as apps' forked children mostly do (fork+exec). It also keeps
         * valgrind from leak-checking a process whose runtime threads fork did not copy:
         * what only their stacks pointed at would count as lost. */
        execl(bad ? "/bin/false" : "/bin/true", bad ? "false" : "true", (char *)NULL);
        _exit(bad ? 1 : 0);
    }
    free(cfg);
    CHECK(pid > 0);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* The parent carries on: its tunnel, a new tunnel, a new client. */
    CHECK(echo_ok(t, 3000, 'b'));
    xh_tunnel *t2 = open_tunnel(c);
    CHECK(t2 && echo_ok(t2, 2000, 'c'));
    xh_client *c3 = new_client("packet-up");
    xh_tunnel *t3 = open_tunnel(c3);
    CHECK(t3 && echo_ok(t3, 2000, 'd'));
    EXPECT_RC(xh_tunnel_free(t3), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c3), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_free(t2), XH_RESULT_OK);
    EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    printf("fork: the child got FORKED and freed its inherited handles at once; the parent carried on\n");
}

/* ---------------------------------------------------------------- issue 9: thread exit */

typedef struct {
    xh_tunnel *t;
    int used_before; /* the thread called the library before it began to exit */
    xh_result rc_read, rc_write, rc_close;
} exit_job;

static pthread_key_t g_exit_key;

static void exit_destructor(void *p) {
    exit_job *j = p;
    uint8_t buf[64] = {0};
    size_t n = 0;
    j->rc_read = xh_tunnel_read(j->t, buf, sizeof buf, 0, &n);
    j->rc_write = xh_tunnel_write(j->t, buf, sizeof buf, 0, &n);
    j->rc_close = xh_tunnel_close(j->t);
}

static void *exit_main(void *p) {
    exit_job *j = p;
    if (j->used_before) {
        uint8_t buf[64];
        size_t n = 0;
        EXPECT_RC(xh_tunnel_read(j->t, buf, sizeof buf, 0, &n), XH_RESULT_TIMEOUT);
    }
    pthread_setspecific(g_exit_key, j);
    return NULL;
}

/* Calls from a pthread_key destructor: on a thread that used the library, blocking calls
 * return WRONG_THREAD (its thread-local state is gone) and close still works, and valgrind
 * checks that nothing is left behind; on a thread that did not, they work, and leave the
 * thread-locals the header's thread-exit rule documents (tests/c/valgrind.supp names
 * them; anything else allocated there still fails the valgrind run). */
static void thread_exit_calls(void) {
    CHECK(pthread_key_create(&g_exit_key, exit_destructor) == 0);
    xh_client *c = new_client("stream-up");
    for (int used = 1; used >= 0; used--) {
        exit_job j = {.t = open_tunnel(c), .used_before = used};
        pthread_t th;
        CHECK(pthread_create(&th, NULL, exit_main, &j) == 0);
        pthread_join(th, NULL);
        if (used) {
            EXPECT_RC(j.rc_read, XH_RESULT_WRONG_THREAD);
            EXPECT_RC(j.rc_write, XH_RESULT_WRONG_THREAD);
        } else {
            EXPECT_RC(j.rc_read, XH_RESULT_TIMEOUT);
            EXPECT_RC(j.rc_write, XH_RESULT_OK);
        }
        EXPECT_RC(j.rc_close, XH_RESULT_OK);
        EXPECT_RC(xh_tunnel_free(j.t), XH_RESULT_OK);
    }
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    pthread_key_delete(g_exit_key);
    printf("thread exit: calls from a pthread_key destructor give WRONG_THREAD or work, never PANIC\n");
}

/* An atexit handler runs after main's thread-local destructors: the blocking call is
 * refused, close and free work, and the last free joins the runtime threads (it used to
 * leave them running there: tokio's wait for them parks on the gone thread-locals). */
static xh_client *g_atexit_client;
static xh_tunnel *g_atexit_tunnel;
static int thread_count(void);

static void at_exit(void) {
    uint8_t buf[64];
    size_t n = 0;
    xh_result read = xh_tunnel_read(g_atexit_tunnel, buf, sizeof buf, 0, &n);
    xh_result tfree = xh_tunnel_free(g_atexit_tunnel), cfree = xh_client_free(g_atexit_client);
    /* Joined threads: the kernel may list one for a moment after its join returned, never
     * for the time a shutting-down runtime thread takes to end. */
    int threads = thread_count();
    for (int i = 0; i < 20 && threads != 0; i++) {
        sleep_ms(1);
        threads = thread_count();
    }
    if (read != XH_RESULT_WRONG_THREAD || tfree != XH_RESULT_OK || cfree != XH_RESULT_OK ||
        threads != 0) {
        fprintf(stderr, "FAIL atexit: read %u, tunnel free %u, client free %u, %d xhttp-rt threads\n",
                (unsigned)read, (unsigned)tfree, (unsigned)cfree, threads);
        _exit(1);
    }
    printf("atexit: read gave WRONG_THREAD, both frees worked, the runtime threads were joined\n");
}

/* ---------------------------------------------------------------- the runtime stops */

/* The library's threads: every one is named "xhttp-rt" (src/runtime.rs). Counting only
 * those keeps the check exact under sanitizers, whose runtimes start threads of their own. */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* the thread ended meanwhile */
        if (fgets(comm, sizeof comm, f) && strncmp(comm, "xhttp-rt", 8) == 0) n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

int main(void) {
    g_server_config = getenv("XH_SERVER_CONFIG");
    if (!g_server_config || !*g_server_config) {
        fprintf(stderr, "set XH_SERVER_CONFIG to the JSON line of `xh serve`\n");
        return 2;
    }
    const char *iters = getenv("XH_HARNESS_ITERS");
    g_iters = iters ? atol(iters) : 10000;
    const char *mib = getenv("XH_HARNESS_MIB");
    size_t size = (size_t)(mib ? atol(mib) : 1) << 20;
    int threads_at_start = thread_count();

    messages_and_last_error();
    bad_configs();
    EXPECT_RC(xh_set_log_callback(on_log, &g_log_records, XH_LOG_LEVEL_DEBUG), XH_RESULT_OK);

    const char *modes[] = {"packet-up", "stream-up", "stream-one", "auto"};
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) transfer(modes[i], size, 0x5eed0000u + i);

    handle_misuse();
    free_races_blocked_call(0, 0);
    free_races_blocked_call(0, 1);
    free_races_blocked_call(1, 0);
    free_races_blocked_call(1, 1);
    client_free_closes_its_tunnels();
    partial_writes();
    stress();
    close_wakes_connecting_calls(0);
    close_wakes_connecting_calls(1);
    const char *rounds = getenv("XH_RACE_ROUNDS");
    documented_codes_under_close_races(rounds ? atoi(rounds) : 24);
    fork_rule();
    thread_exit_calls();

    EXPECT_RC(xh_set_log_callback(NULL, NULL, 0), XH_RESULT_OK);
    CHECK(atomic_load(&g_log_records) > 0);
    CHECK(atomic_load(&g_log_reentry_checked) > 0);
    CHECK(atomic_load(&g_log_reentry_refused) == (atomic_load(&g_log_reentry_checked) < 3
                                                      ? atomic_load(&g_log_reentry_checked)
                                                      : 3));

    /* Every handle is freed: the runtime threads were joined by the last free. */
    int threads = thread_count();
    for (int i = 0; i < 50 && threads > threads_at_start; i++) {
        sleep_ms(100);
        threads = thread_count();
    }
    if (threads != threads_at_start)
        fprintf(stderr, "threads: %d at start, %d at the end\n", threads_at_start, threads);
    CHECK(threads == threads_at_start);
    printf("log records received: %ld\n", atomic_load(&g_log_records));

    /* Left for the atexit handler, which frees them after main's thread-locals are gone. */
    g_atexit_client = new_client("stream-up");
    g_atexit_tunnel = open_tunnel(g_atexit_client);
    CHECK(atexit(at_exit) == 0);

    int passed = atomic_load(&g_passed), failed = atomic_load(&g_failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

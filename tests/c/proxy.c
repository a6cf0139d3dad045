/*
 * The proxy surface of the C ABI against VLESS servers: VLESS TCP flows
 * (xh_client_connect_tcp), full-cone UDP sessions (xh_udp_*) and the SOCKS5 inbound
 * (xh_socks_*), each moving data to servers this program runs on loopback (TCP echo, UDP
 * echoes, a DNS-style responder, an HTTP server for curl), SHA-256 checked both ways.
 *
 *   proxy CONFIG...      each a library JSON config with "vlessId" and "mode":"auto":
 *                        `xh serve --vless` and the real Xray (tests/c/run.sh passes both)
 *   XH_SERVER_CONFIG     optional: a config without VLESS, for the refusals that need one
 *
 * Per config: TCP echo in each mode; UDP to three destinations from one handle (XUDP,
 * one Mux tunnel), a reply from a source never sent to (full-cone), a DNS-style exchange
 * on port 53 (a plain VLESS UDP flow, as Xray's client sends it), a datagram kept whole
 * for a bigger buffer; SOCKS5 CONNECT and UDP ASSOCIATE, curl through it, credentials,
 * two servers on one client, garbage from a SOCKS client, a stop while a flow runs, a port
 * in use, the client's free stopping its servers; bad targets, sizes and handles.
 *
 * Prints one line per failed check and ends with "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L

#include "check.h"
#include "sha256.h"
#include "xhttp.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *g_config; /* the config under test */
static const char *g_label;

static void sha256(const void *data, size_t len, uint8_t out[32]) {
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, data, len);
    sha256_final(&c, out);
}

/* --- small socket helpers ---------------------------------------------------------- */

static struct sockaddr_in loopback(uint16_t port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static uint16_t bound_port(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0) return 0;
    return ntohs(a.sin_port);
}

static void set_timeout(int fd, long ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_exact(int fd, uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int tcp_connect(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = loopback(port);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    set_timeout(fd, 30000);
    return fd;
}

/* "127.0.0.1:PORT" → PORT (0 if it is not that shape). */
static uint16_t port_of(const char *addr) {
    const char *colon = strrchr(addr, ':');
    return colon ? (uint16_t)atoi(colon + 1) : 0;
}

/* --- loopback servers: TCP echo, UDP echo, DNS-style responder, HTTP ------------------ */

struct server {
    int fd;
    uint16_t port;
    atomic_int stop;
    pthread_t thread;
    /* UDP echo: the source of its first datagram (the server side's mapped address). */
    struct sockaddr_in first_source;
    atomic_int seen;
    /* HTTP: the body served. */
    const uint8_t *body;
    size_t body_len;
};

static void *echo_conn_main(void *p) {
    int fd = (int)(intptr_t)p;
    uint8_t buf[16384];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
        if (write_all(fd, buf, (size_t)n) != 0) break;
    shutdown(fd, SHUT_WR);
    close(fd);
    return NULL;
}

static void *tcp_echo_main(void *p) {
    struct server *s = p;
    while (!atomic_load(&s->stop)) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) continue; /* the listener's timeout: check `stop` */
        set_timeout(c, 30000);
        pthread_t t;
        if (pthread_create(&t, NULL, echo_conn_main, (void *)(intptr_t)c) == 0)
            pthread_detach(t);
        else
            close(c);
    }
    return NULL;
}

static void *http_main(void *p) {
    struct server *s = p;
    while (!atomic_load(&s->stop)) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) continue;
        set_timeout(c, 30000);
        char req[4096];
        size_t have = 0;
        while (have < sizeof req - 1) {
            ssize_t r = recv(c, req + have, sizeof req - 1 - have, 0);
            if (r <= 0) break;
            have += (size_t)r;
            req[have] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        char head[128];
        int hn = snprintf(head, sizeof head,
                          "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                          s->body_len);
        if (write_all(c, (const uint8_t *)head, (size_t)hn) == 0) write_all(c, s->body, s->body_len);
        shutdown(c, SHUT_WR);
        close(c);
    }
    return NULL;
}

/* A DNS-style answer: the query with QR/RA set, one answer (A 127.0.0.9). */
static size_t dns_answer(const uint8_t *q, size_t n, uint8_t *out) {
    if (n < 12 || n > 400) return 0;
    memcpy(out, q, n);
    out[2] = 0x81, out[3] = 0x80; /* response, recursion available */
    out[7] = 1;                   /* ANCOUNT 1 */
    const uint8_t answer[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 9};
    memcpy(out + n, answer, sizeof answer);
    return n + sizeof answer;
}

static void *udp_main(void *p) {
    struct server *s = p;
    uint8_t buf[65536], out[65536];
    while (!atomic_load(&s->stop)) {
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        ssize_t n = recvfrom(s->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
        if (n <= 0) continue;
        if (!atomic_load(&s->seen)) {
            s->first_source = from;
            atomic_store(&s->seen, 1);
        }
        if (s->port == 53) {
            size_t an = dns_answer(buf, (size_t)n, out);
            if (an) sendto(s->fd, out, an, 0, (struct sockaddr *)&from, flen);
        } else {
            sendto(s->fd, buf, (size_t)n, 0, (struct sockaddr *)&from, flen);
        }
    }
    return NULL;
}

/* Starts a server on 127.0.0.1:`port` (0: any). Returns 0, or -1 with errno. */
static int server_start(struct server *s, int type, uint16_t port, void *(*main_fn)(void *)) {
    memset(s, 0, sizeof *s);
    s->fd = socket(AF_INET, type, 0);
    if (s->fd < 0) return -1;
    int one = 1;
    setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(port);
    if (bind(s->fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        (type == SOCK_STREAM && listen(s->fd, 64) != 0)) {
        int e = errno;
        close(s->fd);
        errno = e;
        return -1;
    }
    set_timeout(s->fd, 100); /* so the thread sees `stop` */
    s->port = bound_port(s->fd);
    if (pthread_create(&s->thread, NULL, main_fn, s) != 0) {
        close(s->fd);
        return -1;
    }
    return 0;
}

static void server_stop(struct server *s) {
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    close(s->fd);
}

static struct server g_tcp_echo, g_udp_echo[3], g_dns, g_http;
static int g_have_dns;

/* --- config and client helpers -------------------------------------------------------- */


static xh_client *new_client(const char *mode) { return client_with_mode(g_config, mode); }

static xh_stats stats_of(xh_client *c) {
    xh_stats s;
    memset(&s, 0, sizeof s);
    EXPECT_RC(xh_client_stats(c, &s), XH_RESULT_OK);
    return s;
}

/* --- VLESS TCP flows ------------------------------------------------------------------ */

struct writer {
    xh_tunnel *t;
    const uint8_t *data;
    size_t len;
    xh_result rc;
};

static void *writer_main(void *p) {
    struct writer *w = p;
    size_t off = 0;
    w->rc = XH_RESULT_OK;
    while (off < w->len && w->rc == XH_RESULT_OK) {
        size_t n = 0;
        size_t piece = w->len - off < 20000 ? w->len - off : 20000;
        w->rc = xh_tunnel_write(w->t, w->data + off, piece, T_MS, &n);
        off += n;
    }
    if (w->rc == XH_RESULT_OK) w->rc = xh_tunnel_shutdown_write(w->t, T_MS);
    return NULL;
}

static void tcp_flow(const char *mode, size_t size, uint64_t seed) {
    xh_client *c = new_client(mode);
    if (!c) return;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%u", g_tcp_echo.port);
    xh_tunnel *t = NULL;
    EXPECT_RC(xh_client_connect_tcp(c, target, T_MS, &t), XH_RESULT_OK);
    if (!t) {
        xh_client_free(c);
        return;
    }
    xh_stats s = stats_of(c);
    CHECK(s.tcp_flows == 1 && s.open_tunnels == 1 && s.raw_tunnels == 0);

    uint8_t *up = calloc(1, size), *down = calloc(1, size + 1);
    if (!up || !down) abort();
    fill(&seed, up, size);
    /* Written on another thread while this one reads: the echo needs both at once. */
    struct writer w = {t, up, size, XH_RESULT_OK};
    pthread_t wt;
    CHECK(pthread_create(&wt, NULL, writer_main, &w) == 0);
    size_t got = 0;
    xh_result rc = XH_RESULT_OK;
    while (rc == XH_RESULT_OK) {
        size_t n = 0;
        rc = xh_tunnel_read(t, down + got, size + 1 - got, T_MS, &n);
        if (rc != XH_RESULT_OK || n == 0) break;
        got += n;
        if (got > size) break;
    }
    pthread_join(wt, NULL);
    EXPECT_RC(w.rc, XH_RESULT_OK);
    EXPECT_RC(rc, XH_RESULT_OK);
    uint8_t a[32], b[32];
    sha256(up, size, a);
    sha256(down, got, b);
    CHECK(got == size);
    CHECK(memcmp(a, b, 32) == 0);
    if (got != size || memcmp(a, b, 32) != 0)
        fprintf(stderr, "  %s %s: %zu of %zu bytes came back\n", g_label, mode, got, size);
    s = stats_of(c);
    CHECK(s.bytes_up == size && s.bytes_down == size);

    EXPECT_RC(xh_tunnel_close(t), XH_RESULT_OK);
    s = stats_of(c);
    CHECK(s.tcp_flows == 0 && s.open_tunnels == 0);
    EXPECT_RC(xh_tunnel_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    free(up);
    free(down);
}

static void bad_targets(void) {
    xh_client *c = new_client("stream-one");
    xh_tunnel *t = NULL;
    const char *bad[] = {"nohost", "::1:80", "[::1:80", "h.example:0", "h.example:70000", ":80", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        EXPECT_RC(xh_client_connect_tcp(c, bad[i], T_MS, &t), XH_RESULT_INVALID_ARGUMENT);
        char err[512];
        last_error(err, sizeof err);
        CHECK(strstr(err, "`target`") != NULL);
    }
    CHECK(t == NULL);
    EXPECT_RC(xh_client_connect_tcp(c, NULL, T_MS, &t), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_connect_tcp(c, "127.0.0.1:1", T_MS, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_client_connect_tcp(NULL, "127.0.0.1:1", T_MS, &t), XH_RESULT_NULL_ARGUMENT);
    xh_client_free(c);

    /* A config without VLESS: the open says which field is missing. */
    const char *plain = getenv("XH_SERVER_CONFIG");
    if (plain && *plain) {
        xh_client *p = NULL;
        EXPECT_RC(xh_client_new(plain, &p), XH_RESULT_OK);
        EXPECT_RC(xh_client_connect_tcp(p, "127.0.0.1:1", T_MS, &t), XH_RESULT_INVALID_CONFIG);
        char err[512];
        last_error(err, sizeof err);
        CHECK(strstr(err, "vlessId") != NULL);
        xh_udp *u = NULL;
        EXPECT_RC(xh_client_open_udp(p, &u), XH_RESULT_INVALID_CONFIG);
        xh_client_free(p);
    }
}

/* --- UDP sessions --------------------------------------------------------------------- */

static void recv_one(xh_udp *u, uint8_t *buf, size_t cap, size_t *len, char *from) {
    *len = 0;
    from[0] = 0;
    EXPECT_RC(xh_udp_recv_from(u, buf, cap, from, XH_TARGET_BUF_LEN, T_MS, len), XH_RESULT_OK);
}

static void udp_sessions(void) {
    xh_client *c = new_client("packet-up");
    xh_udp *u = NULL;
    EXPECT_RC(xh_client_open_udp(c, &u), XH_RESULT_OK);
    if (!u) {
        xh_client_free(c);
        return;
    }
    uint64_t seed = 0xd0d0;
    static uint8_t out[8192], in[8192];
    char from[XH_TARGET_BUF_LEN], target[64];
    size_t len;
    /* Three destinations, one handle, each reply from its own source; twice round. */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 3; i++) {
            size_t n = 100 + 2000 * (size_t)i + (size_t)round;
            fill(&seed, out, n);
            snprintf(target, sizeof target, "127.0.0.1:%u", g_udp_echo[i].port);
            EXPECT_RC(xh_udp_send_to(u, target, out, n, T_MS), XH_RESULT_OK);
            recv_one(u, in, sizeof in, &len, from);
            uint8_t a[32], b[32];
            sha256(out, n, a);
            sha256(in, len, b);
            CHECK(len == n && memcmp(a, b, 32) == 0);
            CHECK(strcmp(from, target) == 0);
        }
    xh_stats s = stats_of(c);
    CHECK(s.mux_tunnels == 1 && s.udp_flows == 0 && s.open_tunnels == 1);

    /* Full-cone: a source we never sent to reaches the same handle, through the mapping
     * the server made for our first datagram. */
    CHECK(atomic_load(&g_udp_echo[0].seen));
    int stranger = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = loopback(0);
    CHECK(bind(stranger, (struct sockaddr *)&sa, sizeof sa) == 0);
    const char hello[] = "from a stranger";
    CHECK(sendto(stranger, hello, sizeof hello, 0, (struct sockaddr *)&g_udp_echo[0].first_source,
                 sizeof g_udp_echo[0].first_source) == (ssize_t)sizeof hello);
    recv_one(u, in, sizeof in, &len, from);
    snprintf(target, sizeof target, "127.0.0.1:%u", bound_port(stranger));
    CHECK(len == sizeof hello && memcmp(in, hello, len) == 0);
    CHECK(strcmp(from, target) == 0);
    close(stranger);

    /* A datagram never cut: too small a buffer keeps it for the next receive. */
    fill(&seed, out, 1000);
    snprintf(target, sizeof target, "127.0.0.1:%u", g_udp_echo[1].port);
    EXPECT_RC(xh_udp_send_to(u, target, out, 1000, T_MS), XH_RESULT_OK);
    uint8_t small[10];
    len = 0;
    EXPECT_RC(xh_udp_recv_from(u, small, sizeof small, from, sizeof from, T_MS, &len),
              XH_RESULT_BUFFER_TOO_SMALL);
    CHECK(len == 1000);
    recv_one(u, in, sizeof in, &len, from);
    CHECK(len == 1000 && memcmp(in, out, 1000) == 0 && strcmp(from, target) == 0);
    /* No source wanted: NULL `from`. */
    EXPECT_RC(xh_udp_send_to(u, target, out, 10, T_MS), XH_RESULT_OK);
    EXPECT_RC(xh_udp_recv_from(u, in, sizeof in, NULL, 0, T_MS, &len), XH_RESULT_OK);
    CHECK(len == 10 && memcmp(in, out, 10) == 0);

    /* DNS on port 53 goes as Xray's client sends it: a plain VLESS UDP flow. */
    if (g_have_dns) {
        const uint8_t query[] = {0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a',
                                 'm', 'p', 'l', 'e', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
        EXPECT_RC(xh_udp_send_to(u, "127.0.0.1:53", query, sizeof query, T_MS), XH_RESULT_OK);
        recv_one(u, in, sizeof in, &len, from);
        CHECK(len == sizeof query + 16 && in[0] == 0xbe && in[1] == 0xef && (in[2] & 0x80));
        CHECK(len >= 4 && memcmp(in + len - 4, "\x7f\x00\x00\x09", 4) == 0);
        CHECK(strcmp(from, "127.0.0.1:53") == 0);
        s = stats_of(c);
        CHECK(s.udp_flows == 1 && s.mux_tunnels == 1);
    }

    /* Bad input: each refused, naming it, with nothing sent. */
    EXPECT_RC(xh_udp_send_to(u, target, out, XH_UDP_MAX_DATAGRAM + 1, T_MS), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_udp_send_to(u, "127.0.0.1:0", out, 10, T_MS), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_udp_send_to(u, "::1:53", out, 10, T_MS), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_udp_send_to(u, target, out, 0, T_MS), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_udp_recv_from(u, in, sizeof in, from, 0, T_MS, &len), XH_RESULT_INVALID_ARGUMENT);
    /* Nothing there: a receive that does not wait times out. */
    EXPECT_RC(xh_udp_recv_from(u, in, sizeof in, NULL, 0, 0, &len), XH_RESULT_TIMEOUT);

    /* Handles: kinds are told apart; close answers CLOSED; free is once. */
    EXPECT_RC(xh_tunnel_close((xh_tunnel *)u), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_udp_close((xh_udp *)c), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_udp_close(u), XH_RESULT_OK);
    EXPECT_RC(xh_udp_close(u), XH_RESULT_OK);
    EXPECT_RC(xh_udp_send_to(u, target, out, 10, T_MS), XH_RESULT_CLOSED);
    EXPECT_RC(xh_udp_free(u), XH_RESULT_OK);
    EXPECT_RC(xh_udp_free(u), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_udp_free(NULL), XH_RESULT_OK);
    xh_client_free(c);
}

struct blocked {
    xh_udp *u;
    xh_result rc;
};

static void *blocked_recv_main(void *p) {
    struct blocked *b = p;
    uint8_t buf[64];
    size_t n;
    b->rc = xh_udp_recv_from(b->u, buf, sizeof buf, NULL, 0, T_MS, &n);
    return NULL;
}

/* A receive blocked on another thread is woken by a close of the session, or of its
 * client; the handle then answers CLOSED until freed. */
static void udp_close_wakes(int via_client) {
    xh_client *c = new_client("stream-one");
    xh_udp *u = NULL;
    EXPECT_RC(xh_client_open_udp(c, &u), XH_RESULT_OK);
    struct blocked b = {u, XH_RESULT_OK};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_recv_main, &b) == 0);
    sleep_ms(200);
    double t0 = now_s();
    if (via_client)
        EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    else
        EXPECT_RC(xh_udp_close(u), XH_RESULT_OK);
    pthread_join(t, NULL);
    CHECK(now_s() - t0 < 5.0);
    EXPECT_RC(b.rc, XH_RESULT_CLOSED);
    EXPECT_RC(xh_udp_free(u), XH_RESULT_OK);
    if (!via_client) EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
}

/* --- SOCKS5 --------------------------------------------------------------------------- */

/* Greets (no auth, or user/pass) and returns the connected socket, or -1. */
static int socks_greet(uint16_t port, const char *user, const char *pass) {
    int fd = tcp_connect(port);
    if (fd < 0) return -1;
    uint8_t hello[3] = {5, 1, (uint8_t)(user ? 2 : 0)}, reply[2];
    if (write_all(fd, hello, 3) || read_exact(fd, reply, 2) || reply[0] != 5 || reply[1] != hello[2]) {
        close(fd);
        return -1;
    }
    if (user) {
        uint8_t msg[600];
        size_t ul = strlen(user), pl = strlen(pass), n = 0;
        msg[n++] = 1;
        msg[n++] = (uint8_t)ul;
        memcpy(msg + n, user, ul), n += ul;
        msg[n++] = (uint8_t)pl;
        memcpy(msg + n, pass, pl), n += pl;
        if (write_all(fd, msg, n) || read_exact(fd, reply, 2) || reply[1] != 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* Sends a request for 127.0.0.1:`port`; returns the reply code and the bound port. */
static int socks_request(int fd, uint8_t cmd, uint16_t port, uint16_t *bound) {
    uint8_t req[10] = {5, cmd, 0, 1, 127, 0, 0, 1, (uint8_t)(port >> 8), (uint8_t)port}, rep[10];
    if (write_all(fd, req, sizeof req) || read_exact(fd, rep, sizeof rep)) return -1;
    if (bound) *bound = (uint16_t)(rep[8] << 8 | rep[9]);
    return rep[1];
}

static int socks_connect(uint16_t socks_port, const char *user, const char *pass) {
    int fd = socks_greet(socks_port, user, pass);
    if (fd < 0) return -1;
    if (socks_request(fd, 1, g_tcp_echo.port, NULL) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* `size` random bytes through an echo flow, checked by SHA-256. */
static int echo_through(int fd, size_t size, uint64_t seed) {
    uint8_t *up = calloc(1, size), *down = calloc(1, size);
    if (!up || !down) abort();
    fill(&seed, up, size);
    int ok = 1;
    /* Small enough pieces that the echo never blocks on a full socket buffer. */
    for (size_t off = 0; off < size && ok; off += 8192) {
        size_t n = size - off < 8192 ? size - off : 8192;
        ok = write_all(fd, up + off, n) == 0 && read_exact(fd, down + off, n) == 0;
    }
    uint8_t a[32], b[32];
    sha256(up, size, a);
    sha256(down, size, b);
    ok = ok && memcmp(a, b, 32) == 0;
    free(up);
    free(down);
    return ok;
}

static uint16_t socks_port(xh_socks *s) {
    char addr[XH_ADDR_BUF_LEN];
    size_t n = 0;
    EXPECT_RC(xh_socks_local_addr(s, addr, sizeof addr, &n), XH_RESULT_OK);
    CHECK(strncmp(addr, "127.0.0.1:", 10) == 0);
    return port_of(addr);
}

static int closed_by_peer(int fd) {
    uint8_t b;
    set_timeout(fd, 10000);
    ssize_t r = recv(fd, &b, 1, 0);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

static void socks_udp_associate(uint16_t port) {
    int ctrl = socks_greet(port, NULL, NULL);
    CHECK(ctrl >= 0);
    if (ctrl < 0) return;
    uint16_t relay = 0;
    CHECK(socks_request(ctrl, 3, 0, &relay) == 0);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    set_timeout(u, 30000);
    struct sockaddr_in ra = loopback(relay);
    uint64_t seed = 0xabc;
    uint8_t pkt[1200], back[2000];
    for (int i = 0; i < 3; i++) {
        uint16_t dest = g_udp_echo[i].port;
        uint8_t hdr[10] = {0, 0, 0, 1, 127, 0, 0, 1, (uint8_t)(dest >> 8), (uint8_t)dest};
        memcpy(pkt, hdr, 10);
        fill(&seed, pkt + 10, 1000);
        CHECK(sendto(u, pkt, 1010, 0, (struct sockaddr *)&ra, sizeof ra) == 1010);
        ssize_t n = recv(u, back, sizeof back, 0);
        CHECK(n == 1010 && memcmp(back, hdr, 10) == 0 && memcmp(back + 10, pkt + 10, 1000) == 0);
    }
    close(u);
    close(ctrl);
}

static void socks_servers(void) {
    xh_client *c = new_client("stream-up");
    xh_socks *s1 = NULL, *s2 = NULL;
    EXPECT_RC(xh_socks_start(c, "127.0.0.1:0", NULL, NULL, 0, &s1), XH_RESULT_OK);
    EXPECT_RC(xh_socks_start(c, "127.0.0.1:0", "alice", "s3cret", 0, &s2), XH_RESULT_OK);
    if (!s1 || !s2) {
        xh_client_free(c);
        return;
    }
    uint16_t p1 = socks_port(s1), p2 = socks_port(s2);
    CHECK(p1 != 0 && p2 != 0 && p1 != p2);

    /* CONNECT through each server; the second wants its credentials. */
    int f1 = socks_connect(p1, NULL, NULL);
    CHECK(f1 >= 0 && echo_through(f1, 200000, 1));
    int f2 = socks_connect(p2, "alice", "s3cret");
    CHECK(f2 >= 0 && echo_through(f2, 200000, 2));
    CHECK(socks_greet(p2, NULL, NULL) < 0); /* no-auth offered: refused (method 0xff) */
    xh_stats s = stats_of(c);
    CHECK(s.tcp_flows == 2);
    if (f2 >= 0) close(f2);

    /* UDP ASSOCIATE: three destinations through the relay. */
    socks_udp_associate(p1);

    /* curl through the server (TCP), the body checked by SHA-256. */
    char cmd[512], file[64];
    snprintf(file, sizeof file, "/tmp/xh-proxy-curl-%d", (int)getpid());
    snprintf(cmd, sizeof cmd,
             "curl -sS --max-time 60 --socks5-hostname 127.0.0.1:%u http://127.0.0.1:%u/ -o %s",
             p1, g_http.port, file);
    CHECK(system(cmd) == 0);
    FILE *fp = fopen(file, "rb");
    CHECK(fp != NULL);
    if (fp) {
        uint8_t *got = malloc(g_http.body_len + 1);
        size_t n = fread(got, 1, g_http.body_len + 1, fp);
        fclose(fp);
        uint8_t a[32], b[32];
        sha256(g_http.body, g_http.body_len, a);
        sha256(got, n, b);
        CHECK(n == g_http.body_len && memcmp(a, b, 32) == 0);
        free(got);
    }
    remove(file);

    /* Garbage from a SOCKS client closes that connection only. */
    int g = tcp_connect(p1);
    const uint8_t junk[] = {4, 1, 0, 80, 127, 0, 0, 1, 'x', 'y', 'z', 0};
    CHECK(g >= 0 && write_all(g, junk, sizeof junk) == 0);
    CHECK(g >= 0 && closed_by_peer(g));
    if (g >= 0) close(g);
    CHECK(f1 >= 0 && echo_through(f1, 10000, 3)); /* the other flow carries on */

    /* Bad input, each naming what is wrong. */
    char err[512];
    xh_socks *bad = NULL;
    char in_use[64];
    snprintf(in_use, sizeof in_use, "127.0.0.1:%u", p1);
    EXPECT_RC(xh_socks_start(c, in_use, NULL, NULL, 0, &bad), XH_RESULT_OTHER);
    last_error(err, sizeof err);
    CHECK(strstr(err, in_use) != NULL && strstr(err, "in use") != NULL);
    EXPECT_RC(xh_socks_start(c, "0.0.0.0:0", NULL, NULL, 0, &bad), XH_RESULT_INVALID_ARGUMENT);
    last_error(err, sizeof err);
    CHECK(strstr(err, "`listen`") != NULL && strstr(err, "loopback") != NULL);
    EXPECT_RC(xh_socks_start(c, "localhost:1080", NULL, NULL, 0, &bad), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_socks_start(c, "127.0.0.1:0", "user", NULL, 0, &bad), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_socks_start(c, "127.0.0.1:0", "", "p", 0, &bad), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_socks_start(c, "127.0.0.1:0", NULL, NULL, 8, &bad), XH_RESULT_INVALID_ARGUMENT);
    CHECK(bad == NULL);

    /* A stop closes the flows it carries and frees the port. */
    EXPECT_RC(xh_socks_stop(s1), XH_RESULT_OK);
    CHECK(f1 >= 0 && closed_by_peer(f1));
    if (f1 >= 0) close(f1);
    CHECK(tcp_connect(p1) < 0);
    EXPECT_RC(xh_socks_stop(s1), XH_RESULT_OK);
    CHECK(socks_port(s1) == p1); /* the address still answers */
    EXPECT_RC(xh_socks_free(s1), XH_RESULT_OK);
    EXPECT_RC(xh_socks_free(s1), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_socks_stop((xh_socks *)c), XH_RESULT_INVALID_HANDLE);

    /* Freeing the client stops the servers it still has. */
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    int late = tcp_connect(p2);
    CHECK(late < 0);
    if (late >= 0) close(late);
    EXPECT_RC(xh_socks_stop(s2), XH_RESULT_OK);
    EXPECT_RC(xh_socks_free(s2), XH_RESULT_OK);
}

/* --- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: proxy CONFIG... (library JSON configs with vlessId)\n");
        return 2;
    }
    if (server_start(&g_tcp_echo, SOCK_STREAM, 0, tcp_echo_main) != 0) return 2;
    for (int i = 0; i < 3; i++)
        if (server_start(&g_udp_echo[i], SOCK_DGRAM, 0, udp_main) != 0) return 2;
    g_have_dns = server_start(&g_dns, SOCK_DGRAM, 53, udp_main) == 0;
    if (!g_have_dns) fprintf(stderr, "SKIP the DNS exchange: cannot bind 127.0.0.1:53: %s\n", strerror(errno));
    static uint8_t body[300000];
    uint64_t seed = 0x4854;
    fill(&seed, body, sizeof body);
    if (server_start(&g_http, SOCK_STREAM, 0, http_main) != 0) return 2;
    g_http.body = body;
    g_http.body_len = sizeof body;

    for (int i = 1; i < argc; i++) {
        g_config = argv[i];
        g_label = strstr(argv[i], "\"port\"") ? argv[i] : "config";
        int failed_before = atomic_load(&g_failed);
        const char *modes[] = {"packet-up", "stream-up", "stream-one"};
        for (int m = 0; m < 3; m++) tcp_flow(modes[m], 256 * 1024, 0x7c90 + (uint64_t)m);
        bad_targets();
        for (int k = 0; k < 3; k++) atomic_store(&g_udp_echo[k].seen, 0);
        udp_sessions();
        udp_close_wakes(0);
        udp_close_wakes(1);
        socks_servers();
        printf("config %d: %s\n", i, atomic_load(&g_failed) == failed_before ? "ok" : "FAILED");
    }

    server_stop(&g_tcp_echo);
    for (int i = 0; i < 3; i++) server_stop(&g_udp_echo[i]);
    if (g_have_dns) server_stop(&g_dns);
    server_stop(&g_http);
    int passed = atomic_load(&g_passed), failed = atomic_load(&g_failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

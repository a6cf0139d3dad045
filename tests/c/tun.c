/*
 * The TUN surface of the C ABI (xh_tun_*) against `xh serve --vless`:
 *
 * 1. Misuse gives the documented codes, never a crash: NULL, made-up, freed and
 *    wrong-kind handles, double stop and free, bad options naming their field, an MTU out
 *    of range, bad fds, packets of no or too many bytes, input after stop, a client
 *    without VLESS (when XH_SERVER_CONFIG names one), a client closed under its TUN.
 * 2. The packet API end to end: IPv4 UDP datagrams built here go in through
 *    xh_tun_input (from two threads, while a third reads the counters) to a UDP echo this
 *    program runs, through the server (XUDP); each reply comes out of the callback and is
 *    checked (addresses, ports, payload, IP and UDP checksums). A TCP SYN is answered by a
 *    SYN-ACK for it. Stop with flows open, then free.
 *
 *   tun VLESS_CONFIG     a library JSON config with "vlessId" (`xh serve --vless`)
 *   XH_SERVER_CONFIG     optional: a config without VLESS
 *   XH_TUN_ROUNDS        datagrams per input thread (default 50; fewer under valgrind)
 *
 * Prints one line per failed check and ends with "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L

#include "check.h"
#include "xhttp.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *g_config;

static void expect_last_error_names(const char *what) {
    char err[512];
    last_error(err, sizeof err);
    if (!strstr(err, what)) fprintf(stderr, "last error \"%s\" does not name %s\n", err, what);
    CHECK(strstr(err, what) != NULL);
}

/* --- packets ----------------------------------------------------------------------- */

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t sum) {
    for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* The checksum of a TCP or UDP segment over the IPv4 pseudo-header. */
static uint16_t l4_sum(const uint8_t src[4], const uint8_t dst[4], uint8_t proto, const uint8_t *seg,
                       size_t len) {
    uint8_t pseudo[12];
    memcpy(pseudo, src, 4);
    memcpy(pseudo + 4, dst, 4);
    pseudo[8] = 0;
    pseudo[9] = proto;
    pseudo[10] = (uint8_t)(len >> 8);
    pseudo[11] = (uint8_t)len;
    return fold(sum16(seg, len, sum16(pseudo, sizeof pseudo, 0)));
}

/* An IPv4 packet of `proto` around `seg` (whose checksum field is at `sum_at`, filled). */
static size_t ipv4(uint8_t *out, const uint8_t src[4], const uint8_t dst[4], uint8_t proto, uint8_t *seg,
                   size_t len, size_t sum_at) {
    seg[sum_at] = seg[sum_at + 1] = 0;
    uint16_t s = l4_sum(src, dst, proto, seg, len);
    if (proto == 17 && s == 0) s = 0xffff;
    seg[sum_at] = (uint8_t)(s >> 8);
    seg[sum_at + 1] = (uint8_t)s;
    uint8_t h[20] = {0x45, 0, (uint8_t)((20 + len) >> 8), (uint8_t)(20 + len), 0, 0, 0x40, 0, 64, proto};
    memcpy(h + 12, src, 4);
    memcpy(h + 16, dst, 4);
    uint16_t hs = fold(sum16(h, 20, 0));
    h[10] = (uint8_t)(hs >> 8);
    h[11] = (uint8_t)hs;
    memcpy(out, h, 20);
    memcpy(out + 20, seg, len);
    return 20 + len;
}

static const uint8_t APP_IP[4] = {10, 0, 0, 2};
static const uint8_t LOOPBACK_IP[4] = {127, 0, 0, 1};

static size_t udp_packet(uint8_t *out, uint16_t sport, uint16_t dport, const uint8_t *payload, size_t n) {
    uint8_t seg[8 + 512];
    if (n > 512) abort();
    seg[0] = (uint8_t)(sport >> 8), seg[1] = (uint8_t)sport;
    seg[2] = (uint8_t)(dport >> 8), seg[3] = (uint8_t)dport;
    seg[4] = (uint8_t)((8 + n) >> 8), seg[5] = (uint8_t)(8 + n);
    memcpy(seg + 8, payload, n);
    return ipv4(out, APP_IP, LOOPBACK_IP, 17, seg, 8 + n, 6);
}

static size_t tcp_packet(uint8_t *out, uint16_t sport, uint16_t dport, uint8_t flags, uint32_t seq, uint32_t ack) {
    uint8_t seg[20] = {(uint8_t)(sport >> 8), (uint8_t)sport, (uint8_t)(dport >> 8), (uint8_t)dport,
                       (uint8_t)(seq >> 24), (uint8_t)(seq >> 16), (uint8_t)(seq >> 8), (uint8_t)seq,
                       (uint8_t)(ack >> 24), (uint8_t)(ack >> 16), (uint8_t)(ack >> 8), (uint8_t)ack,
                       0x50, flags, 0xff, 0xff};
    return ipv4(out, APP_IP, LOOPBACK_IP, 6, seg, sizeof seg, 16);
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* A well-formed IPv4 packet from 127.0.0.1 to the app, checksums valid; its transport
 * segment in *seg, *seg_len. */
static int valid_reply(const uint8_t *p, size_t n, uint8_t proto, const uint8_t **seg, size_t *seg_len) {
    if (n < 28 || p[0] != 0x45 || be16(p + 2) != n || p[9] != proto) return 0;
    if (fold(sum16(p, 20, 0)) != 0) return 0;
    if (memcmp(p + 12, LOOPBACK_IP, 4) != 0 || memcmp(p + 16, APP_IP, 4) != 0) return 0;
    *seg = p + 20;
    *seg_len = n - 20;
    return l4_sum(p + 12, p + 16, proto, *seg, *seg_len) == 0;
}

/* --- what the callback receives ------------------------------------------------------ */

#define INBOX 4096
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint8_t *packets[INBOX];
    size_t lens[INBOX];
    size_t count;
    atomic_long calls;
} inbox;

static void deliver(void *ctx, const uint8_t *packet, size_t len) {
    inbox *in = ctx;
    atomic_fetch_add(&in->calls, 1);
    uint8_t *copy = malloc(len);
    if (!copy) abort();
    memcpy(copy, packet, len);
    pthread_mutex_lock(&in->lock);
    if (in->count < INBOX) {
        in->packets[in->count] = copy;
        in->lens[in->count++] = len;
        copy = NULL;
    }
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    free(copy);
}

/* Waits (up to `ms`) for a packet `match` accepts, removes and returns 1. */
static int take(inbox *in, int (*match)(const uint8_t *, size_t, const void *), const void *arg, long ms) {
    double deadline = now_s() + (double)ms / 1000;
    pthread_mutex_lock(&in->lock);
    for (;;) {
        for (size_t i = 0; i < in->count; i++) {
            if (match(in->packets[i], in->lens[i], arg)) {
                free(in->packets[i]);
                in->packets[i] = in->packets[--in->count];
                in->lens[i] = in->lens[in->count];
                pthread_mutex_unlock(&in->lock);
                return 1;
            }
        }
        if (now_s() >= deadline) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&in->cond, &in->lock, &ts);
    }
    pthread_mutex_unlock(&in->lock);
    return 0;
}

static void inbox_clear(inbox *in) {
    pthread_mutex_lock(&in->lock);
    for (size_t i = 0; i < in->count; i++) free(in->packets[i]);
    in->count = 0;
    pthread_mutex_unlock(&in->lock);
}

typedef struct {
    uint16_t app_port, echo_port;
    const uint8_t *payload;
    size_t len;
} udp_want;

static int is_udp_reply(const uint8_t *p, size_t n, const void *arg) {
    const udp_want *w = arg;
    const uint8_t *seg;
    size_t sl;
    if (!valid_reply(p, n, 17, &seg, &sl)) return 0;
    return sl == 8 + w->len && be16(seg) == w->echo_port && be16(seg + 2) == w->app_port &&
           be16(seg + 4) == sl && memcmp(seg + 8, w->payload, w->len) == 0;
}

typedef struct {
    uint16_t app_port, dst_port;
    uint32_t iss_app;
} syn_want;

static int is_syn_ack(const uint8_t *p, size_t n, const void *arg) {
    const syn_want *w = arg;
    const uint8_t *seg;
    size_t sl;
    if (!valid_reply(p, n, 6, &seg, &sl) || sl < 20) return 0;
    return be16(seg) == w->dst_port && be16(seg + 2) == w->app_port && (seg[13] & 0x12) == 0x12 &&
           be32(seg + 8) == w->iss_app + 1;
}

/* --- a UDP echo on loopback ------------------------------------------------------------ */

static int g_echo_fd = -1;
static uint16_t g_echo_port;
static pthread_t g_echo_thread;

static void *echo_main(void *p) {
    (void)p;
    uint8_t buf[2048];
    for (;;) {
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(g_echo_fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return NULL;
        }
        if (n == 4 && memcmp(buf, "stop", 4) == 0) return NULL;
        sendto(g_echo_fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
}

static int echo_start(void) {
    g_echo_fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (g_echo_fd < 0 || bind(g_echo_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(g_echo_fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    g_echo_port = ntohs(a.sin_port);
    return pthread_create(&g_echo_thread, NULL, echo_main, NULL);
}

static void echo_stop(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(g_echo_port);
    sendto(s, "stop", 4, 0, (struct sockaddr *)&a, sizeof a);
    close(s);
    pthread_join(g_echo_thread, NULL);
    close(g_echo_fd);
}

/* --- 1. misuse ------------------------------------------------------------------------ */

static void misuse(void) {
    xh_client *c = NULL;
    EXPECT_RC(xh_client_new(g_config, &c), XH_RESULT_OK);
    inbox in = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    xh_tun *t = NULL;
    xh_tun_counters st;
    uint8_t pkt[64];
    size_t plen = udp_packet(pkt, 5000, g_echo_port, (const uint8_t *)"x", 1);

    /* Arguments, before any TUN exists: the field is named. */
    EXPECT_RC(xh_tun_new_packets(c, 1500, NULL, deliver, &in, NULL), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tun_new_packets(c, 1500, NULL, NULL, &in, &t), XH_RESULT_NULL_ARGUMENT);
    expect_last_error_names("out_cb");
    EXPECT_RC(xh_tun_new_packets(NULL, 1500, NULL, deliver, &in, &t), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tun_new_packets(c, 100, NULL, deliver, &in, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("mtu");
    EXPECT_RC(xh_tun_new_packets(c, 70000, NULL, deliver, &in, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("mtu");
    EXPECT_RC(xh_tun_new_packets(c, 1500, "{\"maxFlows\": 0}", deliver, &in, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("maxFlows");
    EXPECT_RC(xh_tun_new_packets(c, 1500, "{\"tcpBuffer\": 1}", deliver, &in, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("tcpBuffer");
    EXPECT_RC(xh_tun_new_packets(c, 1500, "{\"dnsServer\": \"not an ip\"}", deliver, &in, &t),
              XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("dnsServer");
    EXPECT_RC(xh_tun_new_packets(c, 1500, "{\"bogus\": 1}", deliver, &in, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("bogus");
    EXPECT_RC(xh_tun_new_packets(c, 1500, "[", deliver, &in, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("options_json");
    CHECK(t == NULL);
    /* Bad fds: negative, and a number that is not open. */
    EXPECT_RC(xh_tun_start_fd(c, -1, 1500, NULL, &t), XH_RESULT_INVALID_ARGUMENT);
    expect_last_error_names("fd");
    int closed_fd = open("/dev/null", O_RDONLY);
    close(closed_fd);
    EXPECT_RC(xh_tun_start_fd(c, closed_fd, 1500, NULL, &t), XH_RESULT_OTHER);
    EXPECT_RC(xh_tun_start_fd(c, 0, 1500, NULL, NULL), XH_RESULT_NULL_ARGUMENT);
    CHECK(t == NULL);

    /* Handles that are not TUNs. */
    xh_tun *made_up = (xh_tun *)(uintptr_t)0x5a5a5a5a;
    xh_tun *a_client = (xh_tun *)(void *)c;
    xh_tun *fakes[2] = {made_up, a_client};
    for (int i = 0; i < 2; i++) {
        EXPECT_RC(xh_tun_stats(fakes[i], &st), XH_RESULT_INVALID_HANDLE);
        EXPECT_RC(xh_tun_input(fakes[i], pkt, plen), XH_RESULT_INVALID_HANDLE);
        EXPECT_RC(xh_tun_stop(fakes[i]), XH_RESULT_INVALID_HANDLE);
        EXPECT_RC(xh_tun_free(fakes[i]), XH_RESULT_INVALID_HANDLE);
    }
    EXPECT_RC(xh_tun_stats(NULL, &st), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tun_input(NULL, pkt, plen), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tun_stop(NULL), XH_RESULT_OK);
    EXPECT_RC(xh_tun_free(NULL), XH_RESULT_OK);
    /* A TUN handle where a client is expected. */
    EXPECT_RC(xh_tun_new_packets(c, 1500, NULL, deliver, &in, &t), XH_RESULT_OK);
    xh_tun *other = NULL;
    EXPECT_RC(xh_tun_new_packets((const xh_client *)(void *)t, 1500, NULL, deliver, &in, &other),
              XH_RESULT_INVALID_HANDLE);
    xh_stats cs;
    EXPECT_RC(xh_client_stats((const xh_client *)(void *)t, &cs), XH_RESULT_INVALID_HANDLE);

    /* Input arguments; stop twice; input after stop; stats after stop; free twice. */
    EXPECT_RC(xh_tun_input(t, NULL, 1), XH_RESULT_NULL_ARGUMENT);
    EXPECT_RC(xh_tun_input(t, pkt, 0), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_tun_input(t, pkt, 65536), XH_RESULT_INVALID_ARGUMENT);
    EXPECT_RC(xh_tun_input(t, pkt, 3), XH_RESULT_OK); /* malformed: counted, not refused */
    EXPECT_RC(xh_tun_stats(t, NULL), XH_RESULT_NULL_ARGUMENT);
    double t0 = now_s();
    while (now_s() - t0 < 10) {
        EXPECT_RC(xh_tun_stats(t, &st), XH_RESULT_OK);
        if (st.dropped_malformed == 1) break;
        sleep_ms(10);
    }
    CHECK(st.dropped_malformed == 1 && st.packets_in == 1);
    EXPECT_RC(xh_tun_stop(t), XH_RESULT_OK);
    EXPECT_RC(xh_tun_stop(t), XH_RESULT_OK);
    EXPECT_RC(xh_tun_input(t, pkt, plen), XH_RESULT_CLOSED);
    EXPECT_RC(xh_tun_stats(t, &st), XH_RESULT_OK);
    CHECK(st.packets_in == 1);
    EXPECT_RC(xh_tun_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_tun_free(t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tun_stop(t), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tun_stats(t, &st), XH_RESULT_INVALID_HANDLE);
    EXPECT_RC(xh_tun_input(t, pkt, plen), XH_RESULT_INVALID_HANDLE);

    /* The client's close stops its TUN (the handle stays until freed); its free after. */
    t = NULL;
    EXPECT_RC(xh_tun_new_packets(c, 1500, NULL, deliver, &in, &t), XH_RESULT_OK);
    EXPECT_RC(xh_client_close(c), XH_RESULT_OK);
    EXPECT_RC(xh_tun_input(t, pkt, plen), XH_RESULT_CLOSED);
    EXPECT_RC(xh_tun_new_packets(c, 1500, NULL, deliver, &in, &other), XH_RESULT_CLOSED);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    EXPECT_RC(xh_tun_stats(t, &st), XH_RESULT_OK);
    EXPECT_RC(xh_tun_free(t), XH_RESULT_OK);

    /* A client without VLESS cannot carry a TUN. */
    const char *plain = getenv("XH_SERVER_CONFIG");
    if (plain && *plain) {
        xh_client *p = NULL;
        EXPECT_RC(xh_client_new(plain, &p), XH_RESULT_OK);
        EXPECT_RC(xh_tun_new_packets(p, 1500, NULL, deliver, &in, &t), XH_RESULT_INVALID_CONFIG);
        expect_last_error_names("vlessId");
        EXPECT_RC(xh_client_free(p), XH_RESULT_OK);
    }
    inbox_clear(&in);
}

/* --- 2. packets end to end ------------------------------------------------------------ */

typedef struct {
    xh_tun *tun;
    inbox *in;
    uint16_t app_port;
    int rounds;
    int answered;
} feeder;

/* One app socket: each datagram in, its echo out (UDP may be lost: a few tries each). */
static void *feeder_main(void *p) {
    feeder *f = p;
    for (int i = 0; i < f->rounds; i++) {
        uint8_t payload[64], pkt[128];
        int n = snprintf((char *)payload, sizeof payload, "datagram %d from port %u", i, f->app_port);
        size_t plen = udp_packet(pkt, f->app_port, g_echo_port, payload, (size_t)n);
        udp_want w = {f->app_port, g_echo_port, payload, (size_t)n};
        for (int attempt = 0; attempt < 5; attempt++) {
            if (xh_tun_input(f->tun, pkt, plen) != XH_RESULT_OK) return NULL;
            if (take(f->in, is_udp_reply, &w, 2000)) {
                f->answered++;
                break;
            }
        }
    }
    return NULL;
}

static atomic_int g_stats_done;

static void *stats_main(void *p) {
    xh_tun *t = p;
    while (!atomic_load(&g_stats_done)) {
        xh_tun_counters st;
        if (xh_tun_stats(t, &st) != XH_RESULT_OK) abort();
        sleep_ms(5);
    }
    return NULL;
}

static void packets(int rounds) {
    xh_client *c = NULL;
    EXPECT_RC(xh_client_new(g_config, &c), XH_RESULT_OK);
    static inbox in = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    xh_tun *t = NULL;
    EXPECT_RC(xh_tun_new_packets(c, 1500, "{\"maxFlows\": 64}", deliver, &in, &t), XH_RESULT_OK);
    if (!t) {
        xh_client_free(c);
        return;
    }

    /* Two app sockets fed from two threads while a third reads the counters. */
    feeder f[2] = {{t, &in, 5001, rounds, 0}, {t, &in, 5002, rounds, 0}};
    pthread_t th[2], stats_th;
    atomic_store(&g_stats_done, 0);
    pthread_create(&stats_th, NULL, stats_main, t);
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, feeder_main, &f[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    atomic_store(&g_stats_done, 1);
    pthread_join(stats_th, NULL);
    for (int i = 0; i < 2; i++) {
        if (f[i].answered != rounds) fprintf(stderr, "port %u: %d of %d answered\n", f[i].app_port, f[i].answered, rounds);
        CHECK(f[i].answered == rounds);
    }

    /* A TCP SYN: the stack answers with a SYN-ACK for it; the app then resets it. */
    uint8_t pkt[64];
    uint32_t iss = 0x12345678u;
    size_t n = tcp_packet(pkt, 6000, g_echo_port, 0x02, iss, 0);
    EXPECT_RC(xh_tun_input(t, pkt, n), XH_RESULT_OK);
    syn_want w = {6000, g_echo_port, iss};
    CHECK(take(&in, is_syn_ack, &w, 10000));
    n = tcp_packet(pkt, 6000, g_echo_port, 0x04, iss + 1, 0);
    EXPECT_RC(xh_tun_input(t, pkt, n), XH_RESULT_OK);

    xh_tun_counters st;
    /* The TCP flow is counted by its own task, which may start after the SYN-ACK left. */
    double t0 = now_s();
    do {
        EXPECT_RC(xh_tun_stats(t, &st), XH_RESULT_OK);
        if (st.tcp_flows_total >= 1) break;
        sleep_ms(10);
    } while (now_s() - t0 < 10);
    if (st.udp_flows_total < 2 || st.tcp_flows_total < 1 || st.dropped_malformed != 0)
        fprintf(stderr, "counters: udp total %llu, tcp total %llu, malformed %llu\n",
                (unsigned long long)st.udp_flows_total, (unsigned long long)st.tcp_flows_total,
                (unsigned long long)st.dropped_malformed);
    CHECK(st.udp_flows_total >= 2 && st.tcp_flows_total >= 1 && st.dropped_malformed == 0);
    CHECK(st.bytes_up > 0 && st.bytes_down > 0 && st.packets_out >= (uint64_t)(2 * rounds + 1));
    /* Stop with the UDP flows open, then free: the callback is not called after stop. */
    EXPECT_RC(xh_tun_stop(t), XH_RESULT_OK);
    long calls = atomic_load(&in.calls);
    sleep_ms(100);
    CHECK(atomic_load(&in.calls) == calls);
    EXPECT_RC(xh_tun_stats(t, &st), XH_RESULT_OK);
    CHECK(st.udp_flows == 0 && st.tcp_flows == 0);
    EXPECT_RC(xh_tun_free(t), XH_RESULT_OK);
    EXPECT_RC(xh_client_free(c), XH_RESULT_OK);
    inbox_clear(&in);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tun VLESS_CONFIG (a library JSON config with vlessId)\n");
        return 2;
    }
    g_config = argv[1];
    const char *r = getenv("XH_TUN_ROUNDS");
    int rounds = r && atoi(r) > 0 ? atoi(r) : 50;
    if (echo_start() != 0) {
        fprintf(stderr, "UDP echo: %s\n", strerror(errno));
        return 2;
    }
    misuse();
    packets(rounds);
    echo_stop();
    int passed = atomic_load(&g_passed), failed = atomic_load(&g_failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

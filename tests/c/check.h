/*
 * What the C test programs (harness.c, proxy.c) share: pass/fail counting with the
 * library's last error in every failure line, clocks, and deterministic test data.
 * Test code only; every function is static inline so each program takes what it uses.
 */
#ifndef XH_TEST_CHECK_H
#define XH_TEST_CHECK_H

#include "xhttp.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T_MS 60000u /* a generous bound for one blocking call, valgrind included */

static atomic_int g_passed;
static atomic_int g_failed;

static inline void last_error(char *buf, size_t len) {
    size_t n = 0;
    if (xh_last_error(buf, len, &n) != XH_RESULT_OK) snprintf(buf, len, "(xh_last_error failed)");
}

static inline void check_at(int ok, const char *file, int line, const char *what) {
    if (ok) {
        atomic_fetch_add(&g_passed, 1);
        return;
    }
    atomic_fetch_add(&g_failed, 1);
    fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what);
}
#define CHECK(cond) check_at((cond) ? 1 : 0, __FILE__, __LINE__, #cond)

static inline void expect_rc_at(xh_result got, xh_result want, const char *file, int line, const char *call) {
    if (got == want) {
        atomic_fetch_add(&g_passed, 1);
        return;
    }
    char err[512];
    last_error(err, sizeof err);
    atomic_fetch_add(&g_failed, 1);
    fprintf(stderr, "FAIL %s:%d: %s returned %u (%s), expected %u (%s); last error: %s\n", file, line,
            call, (unsigned)got, xh_result_message(got), (unsigned)want, xh_result_message(want), err);
}
#define EXPECT_RC(call, want) expect_rc_at((call), (want), __FILE__, __LINE__, #call)

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* xorshift64*: deterministic test data and random choices. */
static inline uint64_t next_rand(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static inline void fill(uint64_t *s, uint8_t *buf, size_t len) {
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)(next_rand(s) >> 56);
}

/* `config` (a JSON line with "mode":"auto", as `xh serve` prints it) with that mode
 * replaced by `mode`; the caller frees it. Exits when the config has no such mode. */
static inline char *config_with_mode(const char *config, const char *mode) {
    const char *key = "\"mode\":\"auto\"";
    const char *at = strstr(config, key);
    if (!at) {
        fprintf(stderr, "the config has no %s: %s\n", key, config);
        exit(2);
    }
    size_t pre = (size_t)(at - config);
    size_t len = strlen(config) + strlen(mode) + 16;
    char *out = malloc(len);
    if (!out) abort();
    snprintf(out, len, "%.*s\"mode\":\"%s\"%s", (int)pre, config, mode, at + strlen(key));
    return out;
}

/* A client for `config` in `mode` (see config_with_mode); a failure is counted, and NULL
 * returned. */
static inline xh_client *client_with_mode(const char *config, const char *mode) {
    char *cfg = config_with_mode(config, mode);
    xh_client *c = NULL;
    EXPECT_RC(xh_client_new(cfg, &c), XH_RESULT_OK);
    free(cfg);
    return c;
}

#endif

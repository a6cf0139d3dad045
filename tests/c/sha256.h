/* A small SHA-256 (FIPS 180-4) so the C harness needs no crypto library. */
#ifndef XH_TEST_SHA256_H
#define XH_TEST_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t total;      /* bytes hashed so far */
    uint8_t block[64];   /* pending input, block_len bytes of it */
    size_t block_len;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t len);
void sha256_final(sha256_ctx *c, uint8_t out[32]);
/* Lower-case hex of a digest into out (65 bytes with the NUL). */
void sha256_hex(const uint8_t digest[32], char out[65]);

#endif

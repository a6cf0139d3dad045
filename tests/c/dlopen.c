/*
 * Unloading: dlopen the library, use it, free everything, dlclose; N times. Checks that
 * no file descriptor and no heap is kept per cycle, and reports whether the C library
 * really unmapped the code.
 *
 *   dlopen <path to libxhttp_mobile.so> <cycles> <main|worker>
 *
 * main: the main thread calls the library (glibc then keeps the code mapped until exit,
 *   for the thread-local destructors it registered; each dlopen reuses it).
 * worker: a thread that exits before dlclose calls it (the code is really unmapped, so
 *   every static's heap would be lost for good if it held any).
 *
 * Heap is counted exactly: this program defines malloc and its relatives (glibc's
 * supported way to replace the allocator; -rdynamic exports them, so the library, the
 * dynamic loader and libc call them too) as wrappers of glibc's own that add up the
 * blocks and usable bytes alive. mallinfo2() cannot tell a leak from allocator state: it
 * counts chunks parked in a thread's tcache as in use and moves with fragmentation
 * (+13 KB once in worker mode, +50 to +140 KB growing sublinearly in main mode, with
 * the exact count flat).
 *
 *   XH_SERVER_CONFIG     the JSON line printed by `xh serve` (required)
 *   XH_DLOPEN_VALGRIND   set under valgrind, which replaces these wrappers too: the heap
 *                        is then left to its leak check (in worker mode, a static's block
 *                        is definitely lost once the code is unmapped)
 */
#define _GNU_SOURCE

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* glibc's allocator under its own names (exported for exactly this use). */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
extern void __libc_free(void *);

static atomic_long g_blocks, g_bytes;

static void *counted(void *p) {
    if (p) {
        atomic_fetch_add(&g_blocks, 1);
        atomic_fetch_add(&g_bytes, (long)malloc_usable_size(p));
    }
    return p;
}

static void uncounted(void *p) {
    if (p) {
        atomic_fetch_sub(&g_blocks, 1);
        atomic_fetch_sub(&g_bytes, (long)malloc_usable_size(p));
    }
}

void *malloc(size_t n) { return counted(__libc_malloc(n)); }
void *calloc(size_t k, size_t n) { return counted(__libc_calloc(k, n)); }
void *memalign(size_t a, size_t n) { return counted(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return counted(__libc_memalign(a, n)); }
void *valloc(size_t n) { return counted(__libc_valloc(n)); }
void *pvalloc(size_t n) { return counted(__libc_pvalloc(n)); }

int posix_memalign(void **out, size_t a, size_t n) {
    if (a < sizeof(void *) || (a & (a - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = counted(p);
    return 0;
}

void free(void *p) {
    uncounted(p);
    __libc_free(p);
}

void *realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    long before = (long)malloc_usable_size(p);
    void *q = __libc_realloc(p, n);
    if (q) atomic_fetch_add(&g_bytes, (long)malloc_usable_size(q) - before);
    return q; /* on failure p stays allocated: nothing changes */
}

typedef uint32_t (*new_fn)(const char *, void **);
typedef uint32_t (*open_fn)(void *, uint32_t, void **);
typedef uint32_t (*rw_fn)(void *, void *, size_t, uint32_t, size_t *);
typedef uint32_t (*free_fn)(void *);

static const char *g_lib;
static const char *g_config;

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own */
}

static int mapped(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "libxhttp_mobile")) found = 1;
    fclose(f);
    return found;
}

/* One use: a client, a tunnel, an echo, both freed (the last free joins the runtime). */
static void *use_once(void *handle) {
    new_fn client_new;
    open_fn client_open;
    rw_fn tunnel_write, tunnel_read;
    free_fn tunnel_free, client_free;
    /* POSIX's way from dlsym's void * to a function pointer (ISO C has none). */
#define SYM(var, name)                      \
    do {                                    \
        void *p_ = dlsym(handle, name);     \
        memcpy(&var, &p_, sizeof var);      \
    } while (0)
    SYM(client_new, "xh_client_new");
    SYM(client_open, "xh_client_open");
    SYM(tunnel_write, "xh_tunnel_write");
    SYM(tunnel_read, "xh_tunnel_read");
    SYM(tunnel_free, "xh_tunnel_free");
    SYM(client_free, "xh_client_free");
    if (!client_new || !client_open || !tunnel_write || !tunnel_read || !tunnel_free || !client_free) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        exit(2);
    }
    void *c = NULL, *t = NULL;
    char out[100], in[100];
    size_t n = 0, got = 0;
    memset(out, 'u', sizeof out);
    if (client_new(g_config, &c) || client_open(c, 60000, &t) || tunnel_write(t, out, sizeof out, 60000, &n) ||
        n != sizeof out) {
        fprintf(stderr, "FAIL: using the library\n");
        exit(1);
    }
    while (got < sizeof in) {
        if (tunnel_read(t, in + got, sizeof in - got, 60000, &n) || n == 0) exit(1);
        got += n;
    }
    if (memcmp(in, out, sizeof in) != 0 || tunnel_free(t) || client_free(c)) exit(1);
    return NULL;
}

static void cycle(int worker) {
    void *h = dlopen(g_lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(2);
    }
    if (worker) {
        pthread_t th;
        if (pthread_create(&th, NULL, use_once, h) != 0) exit(2);
        pthread_join(th, NULL);
    } else {
        use_once(h);
    }
    if (dlclose(h) != 0) {
        fprintf(stderr, "dlclose: %s\n", dlerror());
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 4 || !getenv("XH_SERVER_CONFIG") || atoi(argv[2]) < 4) {
        fprintf(stderr, "usage: XH_SERVER_CONFIG=... dlopen LIB CYCLES(>=4) main|worker\n");
        return 2;
    }
    g_lib = argv[1];
    g_config = getenv("XH_SERVER_CONFIG");
    int cycles = atoi(argv[2]), worker = strcmp(argv[3], "worker") == 0;
    /* The first two cycles set up what the C library keeps for good: its dl state, and
     * on the second dlopen the second segment of _dl_find_object's table (one block of
     * 2,304 bytes here, seen with valgrind). The baseline is taken after them. */
    cycle(worker);
    cycle(worker);
    int fds = count_fds();
    long blocks = atomic_load(&g_blocks), bytes = atomic_load(&g_bytes);
    int unmapped = 0;
    for (int i = 2; i < cycles; i++) {
        cycle(worker);
        unmapped += mapped() == 0;
    }
    int fds_end = count_fds();
    long blocks_end = atomic_load(&g_blocks), bytes_end = atomic_load(&g_bytes);
    printf("dlopen %s: %d cycles; after cycles 2..%d: fds %d -> %d, heap %ld -> %ld blocks, %ld -> %ld bytes; "
           "unmapped after %d of %d dlcloses\n",
           argv[3], cycles, cycles, fds, fds_end, blocks, blocks_end, bytes, bytes_end, unmapped, cycles - 2);
    int ok = fds_end == fds;
    if (!getenv("XH_DLOPEN_VALGRIND")) {
        /* Exact: a static or a thread-local keeping even one block per cycle fails this. */
        ok &= blocks_end == blocks && bytes_end == bytes;
        if (blocks == 0) {
            fprintf(stderr, "FAIL: the malloc wrappers counted nothing (built without -rdynamic?)\n");
            ok = 0;
        }
    }
    if (worker) ok &= unmapped == cycles - 2;
    if (!ok) fprintf(stderr, "FAIL: something is kept per dlopen/dlclose cycle\n");
    return ok ? 0 : 1;
}

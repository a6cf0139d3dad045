/*
 * Unloading: dlopen the library, use it, free everything, dlclose; N times. Checks that
 * no file descriptor and no heap is kept per cycle (heap by mallinfo2 here, and by
 * valgrind's leak check when run under it), and reports whether the C library really
 * unmapped the code.
 *
 *   dlopen <path to libxhttp_mobile.so> <cycles> <main|worker>
 *
 * main: the main thread calls the library (glibc then keeps the code mapped until exit,
 *   for the thread-local destructors it registered; each dlopen reuses it).
 * worker: a thread that exits before dlclose calls it (the code is really unmapped, so
 *   every static's heap would be lost for good if it held any).
 *
 *   XH_SERVER_CONFIG   the JSON line printed by `xh serve` (required)
 */
#define _GNU_SOURCE

#include <dirent.h>
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (argc != 4 || !getenv("XH_SERVER_CONFIG")) {
        fprintf(stderr, "usage: XH_SERVER_CONFIG=... dlopen LIB CYCLES main|worker\n");
        return 2;
    }
    g_lib = argv[1];
    g_config = getenv("XH_SERVER_CONFIG");
    int cycles = atoi(argv[2]), worker = strcmp(argv[3], "worker") == 0;
    /* The first cycle sets up what the C library keeps for good (dl state, thread
     * stacks it caches): the baseline is taken after it. */
    cycle(worker);
    int fds = count_fds();
    size_t heap = mallinfo2().uordblks;
    int unmapped = 0;
    for (int i = 1; i < cycles; i++) {
        cycle(worker);
        unmapped += mapped() == 0;
    }
    int fds_end = count_fds();
    size_t heap_end = mallinfo2().uordblks;
    long grown = (long)heap_end - (long)heap;
    printf("dlopen %s: %d cycles, fds %d -> %d, heap in use %zu -> %zu (%+ld bytes), unmapped after %d of %d "
           "dlcloses\n",
           argv[3], cycles, fds, fds_end, heap, heap_end, grown, unmapped, cycles - 1);
    int ok = fds_end == fds;
    /* Allocator noise aside, nothing may grow with the cycles (a static holding even one
     * small block per cycle would add up to more than this over the cycles). */
    if (!getenv("XH_DLOPEN_VALGRIND")) ok &= grown < 1024; /* valgrind's leak check does it there */
    if (worker) ok &= unmapped == cycles - 1;
    if (!ok) fprintf(stderr, "FAIL: something is kept per dlopen/dlclose cycle\n");
    return ok ? 0 : 1;
}

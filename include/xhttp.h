/*
 * xhttp.h: the C ABI of xhttp-mobile, an XHTTP (Xray SplitHTTP) client over HTTP/3.
 *
 * Conventions (every function follows them):
 *
 * Results. Every fallible function returns an xh_result; XH_RESULT_OK (0) is success.
 *   Out-parameters are written only on success. On failure, xh_last_error() gives the
 *   detail on the same thread; xh_result_message() gives a fixed text for any code.
 *
 * Handles. xh_client, xh_tunnel, xh_udp and xh_socks pointers are opaque handles, not
 *   addresses: the library never dereferences them. They resolve through a registry with
 *   generations, so a freed handle, a copy of a freed handle, a handle of another kind or
 *   a made-up value gives XH_RESULT_INVALID_HANDLE and does nothing; it can never crash. Passing
 *   NULL as a handle gives XH_RESULT_NULL_ARGUMENT, except to *_close and *_free, where
 *   NULL is ignored (XH_RESULT_OK).
 *
 * Ownership. The caller owns every handle it receives and frees each once with its
 *   *_free. *_close ends the activity (wakes blocked calls with XH_RESULT_CLOSED) and
 *   keeps the handle; *_free closes if needed and releases it. Both are idempotent;
 *   a second free returns XH_RESULT_INVALID_HANDLE and does nothing. Closing or freeing
 *   a client closes its tunnels and UDP sessions and stops its SOCKS servers; their
 *   handles then answer XH_RESULT_CLOSED until freed. No memory
 *   is handed to the caller: strings are copied into caller buffers or are static.
 *
 * Threads. Every function may be called from any thread, on the same handle from several
 *   threads at once; close and free may race reads and writes. The library runs its
 *   networking on its own runtime threads, started with the first client and stopped
 *   (joined, with a bound) when the last client is freed; the app never runs an event
 *   loop for it. Blocking calls (open, connect_tcp, probe, network_changed, read, write,
 *   shutdown_write, send_to, recv_from, socks stop) made on a library thread or inside another tokio runtime return
 *   XH_RESULT_WRONG_THREAD instead of blocking, and every fallible function called from
 *   inside a library callback (log, socket protect) returns XH_RESULT_WRONG_THREAD: the
 *   return lists below leave that case out, as they leave out XH_RESULT_FORKED (see
 *   fork) and XH_RESULT_PANIC. Callbacks must return quickly: a slow one holds up the
 *   library's threads, and every timeout with them. A close or free wakes every call
 *   blocked on that client or tunnel at once (an open or probe still connecting
 *   included), and every call ending after the close began returns XH_RESULT_CLOSED.
 *
 * Thread exit. Close and free work on any thread at any time, also from a thread-local
 *   or pthread_key destructor and from an atexit handler (a last free there joins the
 *   runtime threads as anywhere else). A blocking call made there, on
 *   a thread whose per-thread state the library already saw destroyed, returns
 *   XH_RESULT_WRONG_THREAD at once instead of crashing or blocking. The library's own
 *   per-thread state holds no heap (the last error is stored inline), and a thread that
 *   called it during its life leaves nothing behind when it exits. One exception: the
 *   runtime and random number generators the library is built on keep per-thread state
 *   freed by thread-local destructors, which the C library runs before pthread_key
 *   destructors; on a thread whose first call into the library comes from a
 *   pthread_key destructor (or later in its exit) that state is registered too late and
 *   stays allocated: up to about 1 KB per such thread (920 bytes measured with valgrind
 *   on x86-64 glibc for a client created, opened, written, read, probed and freed
 *   there). A library cannot tell such a thread from a new one. Avoid it by making
 *   calls from thread-exit code only on threads that called the library before.
 *
 * fork. The library's runtime belongs to the process that started it (with its first
 *   client). In a child made by fork() while a client or tunnel was live, every function
 *   returns XH_RESULT_FORKED and does nothing, except: every *_close, *_free and
 *   xh_socks_stop, and removing the log callback return XH_RESULT_OK at
 *   once and do nothing (the objects behind inherited handles belong to the parent:
 *   closing them would reset the parent's connections, and their memory stays allocated
 *   in the child); xh_version, xh_result_message and xh_last_error work. The child never
 *   touches the parent's runtime, sockets or epoll instance, so the parent carries on
 *   unaffected. Call exec() or _exit() in the child. A child forked while nothing was live
 *   may use the library like any process.
 *
 * Unloading. dlclose() is safe once every handle is freed (the last free has returned),
 *   the log callback is removed and no call is running: the last free joins the runtime
 *   threads, and an idle library holds no thread, no file descriptor and no heap, so a
 *   dlopen/use/free/dlclose cycle leaves nothing behind (the unloading test counts
 *   every allocation over 40 cycles). The C library may keep the code mapped
 *   while a thread that called it is alive (glibc does until that thread's thread-local
 *   destructors ran, for the main thread at exit); a later dlopen then reuses it. Never
 *   dlclose while a handle is live or a call runs: the library's threads would be left
 *   running unmapped code.
 *
 * Timeouts. timeout_ms is in milliseconds; XH_TIMEOUT_INFINITE waits without limit and 0
 *   does not wait (it takes what is possible at once). Every value is valid.
 *
 * Panics. Every function catches panics inside the library and returns
 *   XH_RESULT_PANIC; the process and the other handles are unaffected.
 */

#ifndef XHTTP_H
#define XHTTP_H

/* Generated by cbindgen from src/ffi/ (see cbindgen.toml). Do not edit. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// A `timeout_ms` value meaning "wait as long as it takes".
#define XH_TIMEOUT_INFINITE UINT32_MAX

// A buffer of this many bytes always holds an address written by `xh_tunnel_local_addr`
// or `xh_tunnel_peer_addr` (the longest IPv6 form with port, plus the NUL).
#define XH_ADDR_BUF_LEN 64

// `xh_socks_start` flag: allow a listen address other than loopback without a username
// and password (anyone who can reach it could then use the server).
#define XH_SOCKS_ALLOW_OPEN 1

// The largest datagram `xh_udp_send_to` takes: what an Xray server carries intact.
#define XH_UDP_MAX_DATAGRAM 8192

// A buffer of this many bytes always holds a source written by `xh_udp_recv_from`
// (a 255-byte domain, `:`, a 5-digit port and the NUL).
#define XH_TARGET_BUF_LEN 262

// What every fallible `xh_` function returns. `XH_RESULT_OK` (0) is success; any other
// value is a failure whose detail `xh_last_error` gives on the same thread.
enum xh_result
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // Success. Out-parameters were written.
  XH_RESULT_OK = 0,
  // A required pointer argument was NULL.
  XH_RESULT_NULL_ARGUMENT = 1,
  // An argument is out of range or malformed: a zero-length buffer, a config that is
  // not UTF-8, an unknown log level.
  XH_RESULT_INVALID_ARGUMENT = 2,
  // The config is not valid JSON or breaks a rule; the last error names the field.
  XH_RESULT_INVALID_CONFIG = 3,
  // The handle is not a live handle of the expected kind: already freed, never issued,
  // or a handle of the other kind (a tunnel passed as a client). Nothing was done.
  XH_RESULT_INVALID_HANDLE = 4,
  // The tunnel or client was closed by this side (`xh_tunnel_close`, `xh_client_close`
  // or `xh_client_free` of its client). The handle stays valid until freed.
  XH_RESULT_CLOSED = 5,
  // The call's timeout ran out before anything was done.
  XH_RESULT_TIMEOUT = 6,
  // `xh_tunnel_write` after `xh_tunnel_shutdown_write`.
  XH_RESULT_WRITE_SHUTDOWN = 7,
  // The QUIC/HTTP/3 connection to the server could not be established.
  XH_RESULT_CONNECT_FAILED = 8,
  // The server answered a request of the tunnel with a non-200 status.
  XH_RESULT_SERVER_STATUS = 9,
  // A request of the tunnel failed below HTTP (stream reset, connection lost).
  XH_RESULT_REQUEST_FAILED = 10,
  // A call that may block was made where blocking is not allowed (on one of the
  // library's runtime threads, inside another tokio runtime), or any call was made
  // from inside a library callback (log, socket protect).
  XH_RESULT_WRONG_THREAD = 11,
  // The caller's buffer is too small for the answer; nothing was written.
  XH_RESULT_BUFFER_TOO_SMALL = 12,
  // Another `log` logger is already installed in this process (a Rust host app), so
  // the log callback cannot be installed.
  XH_RESULT_LOGGER_UNAVAILABLE = 13,
  // Too many live handles of one kind.
  XH_RESULT_TOO_MANY_HANDLES = 14,
  // Any other failure; the last error says what.
  XH_RESULT_OTHER = 15,
  // The library caught a panic (a bug). The call did nothing further; the process and
  // every other handle are unaffected.
  XH_RESULT_PANIC = 16,
  // Called in a child process made by `fork()` while the library was running in the
  // parent (see "fork" at the top of this header). Nothing was done.
  XH_RESULT_FORKED = 17,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum xh_result xh_result;
#else
typedef uint32_t xh_result;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// A client: one server config with its QUIC connections and its tunnels. An opaque
// handle: the library never dereferences it, so any value may be passed safely (a wrong
// one gives `XH_RESULT_INVALID_HANDLE`). Created by `xh_client_new`, released by
// `xh_client_free`; usable from any thread, by several threads at once.
typedef struct xh_client xh_client;

// A local SOCKS5 server (RFC 1928; CONNECT and UDP ASSOCIATE; optional RFC 1929
// username/password) whose flows go through its client: with VLESS configured, each
// CONNECT is a VLESS TCP flow and each UDP ASSOCIATE app address one full-cone UDP
// session (as `xh_client_connect_tcp` and `xh_client_open_udp`); without it, each CONNECT
// is a raw tunnel and UDP ASSOCIATE is refused. An opaque handle like `xh_tunnel`.
// Created by `xh_socks_start`, released by `xh_socks_free`; any thread.
typedef struct xh_socks xh_socks;

// A TUN data plane: the device's IP packets in, every TCP connection and UDP socket
// carried through its client as VLESS flows (TCP) and full-cone XUDP sessions (UDP), the
// replies out as IP packets. An opaque handle like `xh_tunnel`. Created by
// `xh_tun_start_fd` or `xh_tun_new_packets`, released by `xh_tun_free`; any thread.
typedef struct xh_tun xh_tun;

// A tunnel: one bidirectional byte stream through the server. An opaque handle: the
// library never dereferences it, so any value may be passed safely (a wrong one gives
// `XH_RESULT_INVALID_HANDLE`). Created by `xh_client_open` (raw) or
// `xh_client_connect_tcp` (a VLESS TCP flow), released by
// `xh_tunnel_free`; usable from any thread, by several threads at once (typically one
// reading and one writing).
typedef struct xh_tunnel xh_tunnel;

// A full-cone UDP session through the server: one handle sends datagrams to any number of
// destinations and receives datagrams from any source, the way Xray's client carries UDP
// (XUDP over Mux.Cool in one tunnel, with a plain VLESS UDP flow per destination for
// ports 53 and 443). An opaque handle like `xh_tunnel`: any value may be passed safely.
// Created by `xh_client_open_udp`, released by `xh_udp_free`; usable from any thread, by
// several threads at once.
typedef struct xh_udp xh_udp;

// A log level: one of the `XH_LOG_LEVEL_*` values.
typedef uint32_t xh_log_level;

// Receives one log record. `level` is one of `XH_LOG_LEVEL_ERROR` .. `XH_LOG_LEVEL_TRACE`;
// `target` (the Rust module) and `message` are NUL-terminated UTF-8, valid only during
// the call (copy them to keep them).
//
// Runs on whichever thread logged: one of the library's runtime threads or an app thread
// inside an `xh_` call, possibly on several threads at once. The library holds none of
// its locks while calling it. It must return quickly, must not block on anything another
// `xh_` call might be waiting for, must not unwind (no C++ exceptions or Swift errors
// through it), and must not call `xh_` functions: those return `XH_RESULT_WRONG_THREAD`
// there (except `xh_version`, `xh_result_message` and `xh_last_error`). Records logged
// from inside the callback are dropped.
typedef void (*xh_log_callback)(void *ctx,
                                xh_log_level level,
                                const char *target,
                                const char *message);

// What a client has done so far (`xh_client_stats`).
typedef struct {
  // Bytes accepted for upload on this client's tunnels and flows (app payload: VLESS
  // headers and XUDP framing are not counted).
  uint64_t bytes_up;
  // Bytes read from this client's tunnels and flows (app payload).
  uint64_t bytes_down;
  // Tunnels open now: the sum of the four counts below.
  uint64_t open_tunnels;
  // QUIC connections open now.
  uint64_t live_connections;
  // Of `open_tunnels`: raw tunnels (`xh_client_open`, or inbounds without VLESS).
  uint64_t raw_tunnels;
  // Of `open_tunnels`: VLESS TCP flows (`xh_client_connect_tcp`, SOCKS CONNECT).
  uint64_t tcp_flows;
  // Of `open_tunnels`: VLESS UDP flows to one destination each (UDP to ports 53 and
  // 443, or `packetEncoding` not `xudp`).
  uint64_t udp_flows;
  // Of `open_tunnels`: Mux.Cool tunnels carrying XUDP, one per UDP session.
  uint64_t mux_tunnels;
} xh_stats;

// What `xh_client_probe` measured, in microseconds.
typedef struct {
  // Name resolution, QUIC handshake and HTTP/3 setup of a fresh connection.
  uint64_t connect_us;
  // From sending the mode's first request to its 200 response head.
  uint64_t round_trip_us;
} xh_probe;

// Receives each UDP socket the client creates, before anything is sent on it; returns
// non-zero to let the client use it (e.g. once Android's `VpnService.protect(fd)`
// succeeded), 0 to refuse it (that dial fails with `XH_RESULT_CONNECT_FAILED`). `fd`
// stays owned by the library: do not close it. (An `int`, not `bool`: bindings such as
// JNA map a foreign boolean to `int`.)
//
// Runs on the thread that needs the socket: the app's own thread inside
// `xh_client_open`, `xh_client_probe` or `xh_client_network_changed`, or one of the
// library's runtime threads when a packet-up tunnel moves to a new connection (XMUX).
// It must return quickly, must not block on anything another `xh_` call might wait for,
// must not unwind, and must not call `xh_` functions: those return
// `XH_RESULT_WRONG_THREAD` there. On Android, a runtime thread calling into the JVM must
// attach itself and detach before returning.
typedef int (*xh_protect_callback)(void *ctx, int fd);

// Receives one IP packet for the app (`xh_tun_new_packets`): `packet` is valid for `len`
// bytes during the call only. Called on a thread of the TUN's own, one packet at a time,
// never after `xh_tun_stop` returned. It should return quickly: while it blocks, packets
// for the app queue (1024), then are dropped (counted in `dropped_output_full`). It must not
// unwind.
typedef void (*xh_tun_packet_callback)(void *ctx, const uint8_t *packet, size_t len);

// What a TUN has carried and dropped (`xh_tun_stats`). Counts since start; `*_flows` are
// open now.
typedef struct {
  // TCP connections of the app being carried now.
  uint64_t tcp_flows;
  // UDP sockets of the app being carried now.
  uint64_t udp_flows;
  uint64_t tcp_flows_total;
  uint64_t udp_flows_total;
  // UDP datagrams and TCP connections to the virtual DNS address, redirected.
  uint64_t dns_queries;
  // Payload bytes from the app / to the app.
  uint64_t bytes_up;
  uint64_t bytes_down;
  // IP packets read from / written to the device.
  uint64_t packets_in;
  uint64_t packets_out;
  // Flows ended to make room under `maxFlows`.
  uint64_t flows_evicted;
  // TCP connections whose tunnel did not open or whose destination refused them (reset
  // towards the app).
  uint64_t flows_open_failed;
  // Packets dropped: not well-formed IPv4/IPv6 + TCP/UDP, or a bad checksum.
  uint64_t dropped_malformed;
  // Packets dropped: larger than the MTU.
  uint64_t dropped_oversized;
  // Packets dropped: IP fragments.
  uint64_t dropped_fragment;
  // Packets dropped: ICMP and protocols other than TCP and UDP.
  uint64_t dropped_protocol;
  // Packets dropped: IPv6 with `"ipv6": false`.
  uint64_t dropped_ipv6_off;
  // Packets dropped: `xh_tun_input` while the input queue was full.
  uint64_t dropped_input_full;
  // Packets dropped: for the app while the packet callback's queue was full.
  uint64_t dropped_output_full;
  // UDP datagrams dropped: a flow's queue full, the session refused them, or a reply no
  // packet can carry.
  uint64_t dropped_udp;
} xh_tun_counters;

// No records (used as `max_level` to silence the callback).
#define XH_LOG_LEVEL_OFF 0

#define XH_LOG_LEVEL_ERROR 1

#define XH_LOG_LEVEL_WARN 2

#define XH_LOG_LEVEL_INFO 3

#define XH_LOG_LEVEL_DEBUG 4

#define XH_LOG_LEVEL_TRACE 5

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The library's version, e.g. `"0.1.0"`: a static NUL-terminated string, never NULL,
// never to be freed. Any thread, any time.
const char *xh_version(void);

// A fixed English description of a result code (any value; unknown codes get "unknown
// result code"): a static NUL-terminated string, never NULL, never to be freed. Any
// thread, any time. For the detail of a failure, see `xh_last_error`.
const char *xh_result_message(uint32_t code);

// Copies this thread's last error into `buf`: the message of the most recent `xh_` call
// on this thread that did not return `XH_RESULT_OK` (successful calls leave it as it
// was; it is empty if no call on this thread failed yet). The text starts with the
// code's `xh_result_message` and goes on with the detail (the config field, the server's
// status, the handle at fault).
//
// Works like `snprintf`: writes at most `len - 1` bytes plus a NUL (cut at a UTF-8
// character boundary), and sets `*out_len` to the full length without the NUL, so
// `*out_len >= len` means the text was cut. `buf` may be NULL only when `len` is 0 (to
// ask for the length). This function never changes the last error.
//
// Returns `XH_RESULT_OK`, or `XH_RESULT_NULL_ARGUMENT` (`out_len` NULL, or `buf` NULL
// with `len > 0`).
//
// # Safety
// `buf` must be NULL or valid for writes of `len` bytes; `out_len` must be NULL or valid
// for a write.
xh_result xh_last_error(char *buf, size_t len, size_t *out_len);

// Sends the library's log records of `max_level` and more severe to `cb` with `ctx`, or,
// with `cb` NULL, stops sending them (then `ctx` and `max_level` are ignored). See
// `xh_log_callback` for the thread it runs on and what it must not do.
//
// When this returns, no call of a previously installed callback is running any more and
// none will start, so its `ctx` may be released. `ctx` must be usable from any thread.
// Installing the callback is process-wide; in a Rust host that already installed a `log`
// logger it fails with `XH_RESULT_LOGGER_UNAVAILABLE`.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_INVALID_ARGUMENT` (`max_level` above
// `XH_LOG_LEVEL_TRACE`), `XH_RESULT_LOGGER_UNAVAILABLE`, or `XH_RESULT_WRONG_THREAD`
// (called from inside the callback).
//
// # Safety
// `cb`, when not NULL, must be a function with the `xh_log_callback` signature that stays
// callable, with `ctx`, until it is replaced or removed.
xh_result xh_set_log_callback(xh_log_callback cb, void *ctx, xh_log_level max_level);

// Creates a client from `config` (the library's JSON config, an Xray outbound object, a
// whole Xray client config or a `vless://` share link; see the README) and sets `*out`
// to its handle. Does no network I/O: the first tunnel connects.
// Starts the library's runtime threads if no other client or tunnel is live.
//
// Memory: the library JSON's `memoryLimits` (`streamReceiveWindow`,
// `connectionReceiveWindow`, `sendWindow`, `downloadQueue`, `uploadQueue`, in bytes) bounds
// what the client buffers; smaller windows cap a tunnel's throughput at about one stream
// window per round trip (measured numbers: README, "Memory limits").
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT` (`config` or `out` NULL),
// `XH_RESULT_INVALID_ARGUMENT` (`config` is not UTF-8), `XH_RESULT_INVALID_CONFIG` (not
// JSON, or a field breaks a rule: the last error names it), `XH_RESULT_TOO_MANY_HANDLES`,
// `XH_RESULT_OTHER` (the runtime could not start).
//
// # Safety
// `config` must be NULL or a NUL-terminated string; `out` must be NULL or valid for a
// write. The caller owns the new handle and must pass it to `xh_client_free` once.
xh_result xh_client_new(const char *config, xh_client **out);

// Opens one tunnel through `client` and sets `*out` to its handle. Blocks until the
// tunnel's requests are sent (connecting first if needed) or `timeout_ms` runs out
// (`XH_TIMEOUT_INFINITE`: no limit; 0 fails with `XH_RESULT_TIMEOUT` unless it can be
// done without waiting, which opening practically never can). Any thread except the
// library's own; several opens may run at once. A close or free of the client on another
// thread wakes it at once with `XH_RESULT_CLOSED`, also while it is still connecting.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
// `XH_RESULT_CLOSED` (the client is or was meanwhile closed), `XH_RESULT_TIMEOUT`,
// `XH_RESULT_CONNECT_FAILED`, `XH_RESULT_REQUEST_FAILED`, `XH_RESULT_WRONG_THREAD`,
// `XH_RESULT_TOO_MANY_HANDLES`.
//
// # Safety
// `out` must be NULL or valid for a write. The caller owns the new handle and must pass
// it to `xh_tunnel_free` once (freeing the client does not free it).
xh_result xh_client_open(const xh_client *client, uint32_t timeout_ms, xh_tunnel **out);

// Opens a VLESS TCP flow through `client` to `target` and sets `*out` to its handle: an
// `xh_tunnel` whose reads and writes carry the flow's payload (the VLESS headers are the
// library's business), used and released exactly like one from `xh_client_open`. The
// client's config must carry VLESS (`vlessId`, an Xray VLESS outbound or a `vless://`
// link). `target` is `"host:port"`, `"1.2.3.4:port"` or `"[v6]:port"`: the server
// connects there. Blocks, and is woken, as `xh_client_open`. The request header goes out
// with the first write (or alone 200 ms after the open, for protocols where the server
// speaks first), as Xray's client sends it. Whether the server reached `target` shows
// only as data or as the end of the download, as with Xray's own client.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT`
// (`target` is not UTF-8 or not `host:port`: no port, port 0, an IPv6 address without
// brackets, a host over 255 bytes; the last error names it), `XH_RESULT_INVALID_CONFIG`
// (the config has no VLESS id), and the results of `xh_client_open`.
//
// # Safety
// `target` must be NULL or a NUL-terminated string; `out` must be NULL or valid for a
// write. The caller owns the new handle and must pass it to `xh_tunnel_free` once.
xh_result xh_client_connect_tcp(const xh_client *client,
                                const char *target,
                                uint32_t timeout_ms,
                                xh_tunnel **out);

// Writes the client's counters to `*out`. Never blocks; any thread; also after
// `xh_client_close`.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`.
//
// # Safety
// `out` must be NULL or valid for a write.
xh_result xh_client_stats(const xh_client *client, xh_stats *out);

// Measures the config's latency (`*out`) on a connection of its own: the client's
// connections, tunnels and counters are untouched. The request is the one a tunnel would
// send first (the download GET, or stream-one's POST, whose body is reset afterwards).
// Blocks up to `timeout_ms` (`XH_TIMEOUT_INFINITE`: no limit). Any thread except the
// library's own.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
// `XH_RESULT_CLOSED` (the client is or was meanwhile closed: a close or free on another
// thread wakes the probe at once), `XH_RESULT_TIMEOUT`, `XH_RESULT_CONNECT_FAILED`,
// `XH_RESULT_SERVER_STATUS` (the server answered non-200: the last error names the
// status), `XH_RESULT_REQUEST_FAILED`, `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `out` must be NULL or valid for a write.
xh_result xh_client_probe(const xh_client *client, uint32_t timeout_ms, xh_probe *out);

// Installs (or with `cb` NULL, removes) `client`'s socket protect callback; `ctx` is
// passed back to it. Sockets created from now on go through it; sockets already open are
// not revisited (call `xh_client_network_changed` to move them to new, protected ones).
// When this returns, no call of a replaced callback is running any more, so its `ctx`
// may be freed; the same holds once `xh_client_close` or `xh_client_free` returns (they
// drop the callback, waiting for a call of it in progress). Any thread except inside a
// library callback.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_NULL_ARGUMENT` (NULL
// client), `XH_RESULT_WRONG_THREAD` (from inside a callback).
//
// # Safety
// `cb`, if set, must be safe to call with `ctx` from any thread until it is replaced or
// the client is closed or freed.
xh_result xh_client_set_protect(const xh_client *client, xh_protect_callback cb, void *ctx);

// Tells the client that the device changed networks (Wi-Fi to cellular, a new VPN
// underlay): every open QUIC connection of the client moves to a new UDP socket (passed
// through the protect callback) and its tunnels carry on over the new path (QUIC
// connection migration). A connection that cannot move is retired; new tunnels dial
// afresh. Sets `*moved`, when `moved` is not NULL, to how many connections moved. Does
// not block on the network. Any thread except the library's own.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT` (NULL client),
// `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `moved` must be NULL or valid for a write.
xh_result xh_client_network_changed(const xh_client *client, uint32_t *moved);

// Closes the client: every tunnel opened through it is closed (blocked reads and writes
// on other threads return `XH_RESULT_CLOSED` at once, their handles answer
// `XH_RESULT_CLOSED` until freed), its QUIC connections are closed, and later opens
// fail with `XH_RESULT_CLOSED`. The handle stays valid (stats still work) until
// `xh_client_free`. SOCKS servers started through the client are stopped too, and this
// waits (at most about 3 s, normally milliseconds) for their listeners to close, so their
// ports are free when it returns; otherwise it never blocks. Idempotent; any thread, also
// while other threads use the client or its tunnels.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a client already
// closed) or `XH_RESULT_INVALID_HANDLE` (freed or not a client: nothing was done).
xh_result xh_client_close(xh_client *client);

// Releases the client handle, closing the client first (see `xh_client_close`); the
// handle, and every copy of it, is invalid afterwards. Tunnel handles of this client stay
// valid, answer `XH_RESULT_CLOSED`, and must still be freed. When this frees the last
// live client and no other call is running, the library's runtime threads are stopped
// and joined before it returns (bounded: at most about 2 s, normally milliseconds).
// Any thread, also while other threads are blocked on the client's tunnels.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
// (already freed or not a client: nothing was done, so a double free is harmless).
xh_result xh_client_free(xh_client *client);

// Starts a SOCKS5 server for `client` on `listen` (`"127.0.0.1:1080"`, `"[::1]:0"`; port
// 0 picks a free one, see `xh_socks_local_addr`) and sets `*out` to its handle. With `user`
// and `pass` (both, or both NULL) every SOCKS client must give them. A listen address that
// is not loopback needs them, or `XH_SOCKS_ALLOW_OPEN` in `flags`. The config's `policy`
// sets its timeouts. A SOCKS client that speaks garbage gets its connection closed; the
// server and its other flows carry on. Stopping or freeing it, or closing or freeing the
// client, closes its flows. Several servers may run on one client. Any thread except the
// library's own.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (the
// last error names `listen`, `user`, `pass` or `flags`), `XH_RESULT_INVALID_HANDLE`,
// `XH_RESULT_CLOSED` (the client is closed), `XH_RESULT_OTHER` (the address could not be
// bound, e.g. the port is in use: the last error says so), `XH_RESULT_TOO_MANY_HANDLES`,
// `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `listen` must be NULL or a NUL-terminated string; `user` and `pass` must each be NULL
// or a NUL-terminated string; `out` must be NULL or valid for a write. The caller owns the
// new handle and must pass it to `xh_socks_free` once.
xh_result xh_socks_start(const xh_client *client,
                         const char *listen,
                         const char *user,
                         const char *pass,
                         uint32_t flags,
                         xh_socks **out);

// Writes the address the server listens on (`"127.0.0.1:40123"`, with the real port when
// started on port 0) into `buf` with a NUL and sets `*out_len` to its length without the
// NUL; `XH_ADDR_BUF_LEN` bytes always suffice. Never blocks; still answers after a stop.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
// 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_BUFFER_TOO_SMALL` (nothing written).
//
// # Safety
// `buf` must be NULL or valid for writes of `len` bytes; `out_len` must be NULL or valid
// for a write.
xh_result xh_socks_local_addr(const xh_socks *socks, char *buf, size_t len, size_t *out_len);

// Stops the server: it accepts no more connections, every flow it carries is closed (app
// sockets and tunnels), and its port is free when this returns (it waits a few seconds at
// most for that). The handle stays valid until `xh_socks_free`. Idempotent; any thread
// except the library's own.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a server already
// stopped) or `XH_RESULT_INVALID_HANDLE`.
xh_result xh_socks_stop(xh_socks *socks);

// Releases the handle, stopping the server first (see `xh_socks_stop`); the handle, and
// every copy of it, is invalid afterwards.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
// (already freed or not a SOCKS server: nothing was done).
xh_result xh_socks_free(xh_socks *socks);

// Starts a TUN on the TUN device `fd` (Linux, Android `VpnService`) whose packets are at
// most `mtu` bytes (1280-65535), with `options_json` (NULL or a JSON object; see
// docs/tun.md: `dnsAddress`, `dnsServer`, `maxFlows`, `udpIdle`, `tcpBuffer`, `ipv6`), and
// sets `*out` to its handle. The client must carry VLESS. The library never closes `fd`: it
// reads and writes a duplicate, closed by `xh_tun_stop` (so the device stays up until
// then); the open file is switched to non-blocking mode. Stopping or freeing it, or
// closing or freeing the client, ends every flow. Any thread except the library's own.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (the last
// error names `mtu` or the option field), `XH_RESULT_INVALID_CONFIG` (the client has no
// VLESS), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED` (the client is closed),
// `XH_RESULT_OTHER` (`fd` could not be duplicated or polled: the last error says why),
// `XH_RESULT_TOO_MANY_HANDLES`, `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `options_json` must be NULL or a NUL-terminated string; `out` must be NULL or valid for
// a write. The caller owns the new handle and must pass it to `xh_tun_free` once.
xh_result xh_tun_start_fd(const xh_client *client,
                          int fd,
                          uint32_t mtu,
                          const char *options_json,
                          xh_tun **out);

// Starts a TUN fed by the app (iOS `NEPacketTunnelProvider.packetFlow`): packets from the
// app go in through `xh_tun_input`, packets for the app come out through `out_cb` with
// `ctx` (see `xh_tun_packet_callback`). `mtu`, `options_json` and the rest as
// `xh_tun_start_fd`.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT` (also a NULL `out_cb`),
// `XH_RESULT_INVALID_ARGUMENT` (the last error names `mtu` or the option field),
// `XH_RESULT_INVALID_CONFIG` (the client has no VLESS), `XH_RESULT_INVALID_HANDLE`,
// `XH_RESULT_CLOSED` (the client is closed), `XH_RESULT_OTHER` (the output thread could
// not start), `XH_RESULT_TOO_MANY_HANDLES`, `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// As `xh_tun_start_fd`; `out_cb` must stay callable with `ctx`, and `ctx` usable from any
// thread, until `xh_tun_stop` (or `xh_tun_free`, or the client's close) returned.
xh_result xh_tun_new_packets(const xh_client *client,
                             uint32_t mtu,
                             const char *options_json,
                             xh_tun_packet_callback out_cb,
                             void *ctx,
                             xh_tun **out);

// Hands the TUN one IP packet from the app (`len` bytes at `packet`, copied before this
// returns). Never blocks: while the input queue is full the packet is dropped and counted
// (`dropped_input_full`), as a link would lose it; a malformed packet is counted and
// dropped later. Any thread, including the packet callback's.
//
// Returns `XH_RESULT_OK` (also for a packet dropped as above), `XH_RESULT_NULL_ARGUMENT`,
// `XH_RESULT_INVALID_ARGUMENT` (`len` 0 or above 65535, or the TUN reads an fd),
// `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED` (stopped).
//
// # Safety
// `packet` must be NULL or valid for reads of `len` bytes.
xh_result xh_tun_input(const xh_tun *tun, const uint8_t *packet, size_t len);

// Writes the TUN's counters to `*out`. Never blocks; any thread; also after `xh_tun_stop`
// (the counters at the stop).
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`.
//
// # Safety
// `out` must be NULL or valid for a write.
xh_result xh_tun_stats(const xh_tun *tun, xh_tun_counters *out);

// Stops the TUN: every flow ends (tunnels closed), the fd's duplicate is closed, and the
// packet callback is not called again once this returns (it waits a few seconds at most
// for a callback still running; called from inside the callback it does not wait). The
// handle stays valid (stats still work) until `xh_tun_free`. Idempotent; any thread
// except the library's own.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a TUN already stopped)
// or `XH_RESULT_INVALID_HANDLE`.
xh_result xh_tun_stop(xh_tun *tun);

// Releases the handle, stopping the TUN first (see `xh_tun_stop`); the handle, and every
// copy of it, is invalid afterwards.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
// (already freed or not a TUN: nothing was done).
xh_result xh_tun_free(xh_tun *tun);

// Reads downloaded bytes into `buf` (at most `cap`) and sets `*out_read` to how many.
// `*out_read == 0` with `XH_RESULT_OK` means the server ended the download (end of
// stream); every later read says the same. Blocks until at least one byte or the end is
// there, or `timeout_ms` runs out (`XH_TIMEOUT_INFINITE`: no limit; 0: return what is
// already there without waiting). A close or free on another thread wakes it with
// `XH_RESULT_CLOSED`. One reader at a time is the normal use; concurrent reads are safe
// and each byte goes to exactly one of them.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT`
// (`cap` is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`
// (nothing was read), `XH_RESULT_SERVER_STATUS` / `XH_RESULT_REQUEST_FAILED` /
// `XH_RESULT_CONNECT_FAILED` (the tunnel failed; every later call says so too),
// `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `buf` must be NULL or valid for writes of `cap` bytes, and not be used by anything
// else during the call; `out_read` must be NULL or valid for a write.
xh_result xh_tunnel_read(const xh_tunnel *tunnel,
                         uint8_t *buf,
                         size_t cap,
                         uint32_t timeout_ms,
                         size_t *out_read);

// Queues bytes of `buf` for upload and sets `*out_written` to how many. Waits while the
// upload is full, until all `len` bytes are queued or `timeout_ms` runs out
// (`XH_TIMEOUT_INFINITE`: no limit; 0: queue what fits without waiting). If the timeout
// runs out after some bytes were queued, the result is `XH_RESULT_OK` with
// `*out_written < len`: send the rest later. A close or free on another thread wakes it
// with `XH_RESULT_CLOSED`.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
// is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT` (nothing was
// queued), `XH_RESULT_WRITE_SHUTDOWN`, `XH_RESULT_SERVER_STATUS` /
// `XH_RESULT_REQUEST_FAILED` / `XH_RESULT_CONNECT_FAILED` (the tunnel failed),
// `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `buf` must be NULL or valid for reads of `len` bytes during the call; `out_written`
// must be NULL or valid for a write.
xh_result xh_tunnel_write(const xh_tunnel *tunnel,
                          const uint8_t *buf,
                          size_t len,
                          uint32_t timeout_ms,
                          size_t *out_written);

// Ends the upload cleanly once everything queued is sent (the download goes on; in
// `stream-up`/`stream-one` the request body is finished, in `packet-up` the last POSTs
// are flushed). Waits only for a write running on another thread to finish queueing, at
// most `timeout_ms` (`XH_TIMEOUT_INFINITE`: no limit). Idempotent.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
// `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`, `XH_RESULT_SERVER_STATUS` /
// `XH_RESULT_REQUEST_FAILED` / `XH_RESULT_CONNECT_FAILED` (the tunnel failed before),
// `XH_RESULT_WRONG_THREAD`.
xh_result xh_tunnel_shutdown_write(const xh_tunnel *tunnel, uint32_t timeout_ms);

// Writes the tunnel's local address (`"ip:port"`, `"[ipv6]:port"`) into `buf` with a NUL
// and sets `*out_len` to its length without the NUL: the address its connection had when
// the tunnel opened (a later `xh_client_network_changed` moves the connection but does
// not change this answer). `XH_ADDR_BUF_LEN` bytes always suffice. Never blocks; still
// answers after the tunnel is closed.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
// is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_BUFFER_TOO_SMALL` (nothing written).
//
// # Safety
// `buf` must be NULL or valid for writes of `len` bytes; `out_len` must be NULL or valid
// for a write.
xh_result xh_tunnel_local_addr(const xh_tunnel *tunnel, char *buf, size_t len, size_t *out_len);

// Like `xh_tunnel_local_addr`, for the server's address (the one the QUIC connection
// carrying the tunnel talks to), in every mode.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
// is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_BUFFER_TOO_SMALL` (nothing written).
//
// # Safety
// As `xh_tunnel_local_addr`.
xh_result xh_tunnel_peer_addr(const xh_tunnel *tunnel, char *buf, size_t len, size_t *out_len);

// Closes the tunnel: a blocked read or write on any thread returns `XH_RESULT_CLOSED` at
// once, an unfinished upload is reset (the server never sees it as complete), and the
// connection slot is released. The handle stays valid, answering `XH_RESULT_CLOSED`,
// until `xh_tunnel_free`. Idempotent; never blocks; any thread.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a tunnel already
// closed) or `XH_RESULT_INVALID_HANDLE` (freed or not a tunnel: nothing was done).
xh_result xh_tunnel_close(xh_tunnel *tunnel);

// Releases the tunnel handle, closing the tunnel first (see `xh_tunnel_close`); the
// handle, and every copy of it, is invalid afterwards. Safe while another thread is
// blocked in a read or write on it: that call returns `XH_RESULT_CLOSED`. Never blocks
// for long (when this lets go of the last reference to the library's runtime, it joins
// its threads; see `xh_client_free`); any thread.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
// (already freed or not a tunnel: nothing was done, so a double free is harmless).
xh_result xh_tunnel_free(xh_tunnel *tunnel);

// Opens a full-cone UDP session through `client` and sets `*out` to its handle. Does no
// network I/O: the first datagram to a destination opens the tunnel it needs, within that
// `xh_udp_send_to`'s timeout. The client's config must carry VLESS. Closing or freeing the
// client closes the session. Any thread.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
// `XH_RESULT_INVALID_CONFIG` (no VLESS id), `XH_RESULT_CLOSED` (the client is closed),
// `XH_RESULT_TOO_MANY_HANDLES`, `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `out` must be NULL or valid for a write. The caller owns the new handle and must pass
// it to `xh_udp_free` once (freeing the client does not free it).
xh_result xh_client_open_udp(const xh_client *client, xh_udp **out);

// Sends one datagram of `len` bytes to `target` (`"host:port"`, `"1.2.3.4:port"`,
// `"[v6]:port"`). Returns once it is queued whole (opening the tunnel it needs first, if
// any), or fails having queued none of it. Waits at most `timeout_ms`
// (`XH_TIMEOUT_INFINITE`: no limit). As with any UDP, a queued datagram may still be lost
// on the way. A close or free on another thread wakes it with `XH_RESULT_CLOSED`.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT`
// (`target` not `host:port` or port 0, `len` 0 or above `XH_UDP_MAX_DATAGRAM`; the last
// error names it), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`,
// `XH_RESULT_CONNECT_FAILED` / `XH_RESULT_SERVER_STATUS` / `XH_RESULT_REQUEST_FAILED`
// (the tunnel could not be opened or failed; the next send opens a new one),
// `XH_RESULT_OTHER` (refused by the config: UDP to port 443 under
// `mux.xudpProxyUDP443: "reject"`), `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `target` must be NULL or a NUL-terminated string; `buf` must be NULL or valid for reads
// of `len` bytes during the call.
xh_result xh_udp_send_to(const xh_udp *udp,
                         const char *target,
                         const uint8_t *buf,
                         size_t len,
                         uint32_t timeout_ms);

// Receives the next datagram from any source into `buf` and sets `*out_len` to its
// length; when `from` is not NULL, writes the source there with a NUL (`"ip:port"`,
// `"[v6]:port"`, or `"name:port"` when the server reports the name the datagram was sent
// to; `XH_TARGET_BUF_LEN` bytes always suffice). Waits until a datagram is there or
// `timeout_ms` runs out (`XH_TIMEOUT_INFINITE`: no limit; 0: only take one already
// there). A close or free on another thread wakes it with `XH_RESULT_CLOSED`.
//
// A datagram is never cut: when it does not fit `cap` (or its source does not fit
// `from_len`), nothing is written but `*out_len`, which is set to the datagram's length,
// the result is `XH_RESULT_BUFFER_TOO_SMALL`, and the datagram stays first in line for
// the next receive.
//
// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`cap`
// 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`,
// `XH_RESULT_BUFFER_TOO_SMALL`, `XH_RESULT_WRONG_THREAD`.
//
// # Safety
// `buf` must be NULL or valid for writes of `cap` bytes; `from` must be NULL or valid
// for writes of `from_len` bytes; `out_len` must be NULL or valid for a write.
xh_result xh_udp_recv_from(const xh_udp *udp,
                           uint8_t *buf,
                           size_t cap,
                           char *from,
                           size_t from_len,
                           uint32_t timeout_ms,
                           size_t *out_len);

// Closes the session: blocked sends and receives on any thread return
// `XH_RESULT_CLOSED` at once, its tunnels are closed. The handle stays valid, answering
// `XH_RESULT_CLOSED`, until `xh_udp_free`. Idempotent; never blocks; any thread.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`.
xh_result xh_udp_close(xh_udp *udp);

// Releases the handle, closing the session first (see `xh_udp_close`); the handle, and
// every copy of it, is invalid afterwards. Safe while another thread is blocked on it.
//
// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
// (already freed or not a UDP session: nothing was done).
xh_result xh_udp_free(xh_udp *udp);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* XHTTP_H */

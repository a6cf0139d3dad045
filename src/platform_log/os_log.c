/* The library's one call into Apple's unified log. `os_log_with_type` is a macro that encodes
 * its arguments at compile time, so it needs a C compiler and <os/log.h>; Rust calls this.
 * `%{public}s`: the text is shown in Console instead of "<private>" (the library never logs
 * secrets; see src/platform_log/mod.rs). */
#include <os/log.h>
#include <stdint.h>

void xhttp_os_log(os_log_t log, uint8_t type, const char *message) {
    os_log_with_type(log, (os_log_type_t)type, "%{public}s", message);
}

//! Compiles the os_log shim (src/platform_log/os_log.c) for Apple targets; nothing elsewhere.

fn main() {
    println!("cargo:rerun-if-changed=src/platform_log/os_log.c");
    let vendor = std::env::var("CARGO_CFG_TARGET_VENDOR").unwrap_or_default();
    if vendor == "apple" {
        cc::Build::new()
            .file("src/platform_log/os_log.c")
            .compile("xhttp_os_log");
    }
}

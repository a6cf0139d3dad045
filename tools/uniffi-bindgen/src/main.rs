//! `cargo run -p uniffi-bindgen -- generate --library <lib> ...`: uniffi's binding
//! generator, pinned (workspace dependency) to the uniffi version the library uses. A package
//! of its own so that building it never rebuilds the library with uniffi's CLI.

fn main() {
    uniffi::uniffi_bindgen_main()
}

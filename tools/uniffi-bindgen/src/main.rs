//! `cargo run --features bindgen --bin uniffi-bindgen -- generate --library <lib> ...`:
//! uniffi's binding generator, pinned to the uniffi version the library uses.

fn main() {
    uniffi::uniffi_bindgen_main()
}

//! Config import: any text (library JSON, Xray outbound or whole config, `vless://` link)
//! either becomes a client or is refused with an error that says something; never a panic.
//! A config that is accepted must also be accepted again when imported twice (import is a
//! pure function of its text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xhttp_mobile::config::xray::import;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match import(text) {
        Ok(cfg) => {
            let again = import(text).expect("an accepted config is accepted again");
            assert_eq!(cfg, again);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

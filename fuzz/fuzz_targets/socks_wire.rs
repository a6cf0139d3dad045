//! The SOCKS5 inbound's parsers, fed what a hostile local app may send: greeting,
//! username/password, request, UDP datagram header. No panic; a parse never claims more
//! bytes than it was given; what parses re-encodes (UDP) to what was parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xhttp_mobile::proxy::socks::wire::{
    encode_udp, parse_auth, parse_greeting, parse_request, parse_udp,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, n))) = parse_greeting(data) {
        assert!(n <= data.len());
    }
    if let Ok(Some((_, n))) = parse_auth(data) {
        assert!(n <= data.len());
    }
    if let Ok(Some((_, n))) = parse_request(data) {
        assert!(n <= data.len());
    }
    if let Ok(p) = parse_udp(data) {
        let again = encode_udp(&p.target, p.payload);
        let p2 = parse_udp(&again).expect("an encoded datagram parses");
        assert_eq!(p2.target, p.target);
        assert_eq!(p2.payload, p.payload);
    }
});

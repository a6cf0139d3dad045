//! VLESS framing from the wire: the response header however the download is cut, the request
//! header parser (the test server's side), and UDP length framing. Whatever the bytes, no
//! panic; cutting the input differently never changes the result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xhttp_mobile::proxy::vless::{
    ResponseHeader, UdpDeframer, frame_udp, parse_address_port, parse_request_header,
    request_header,
};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    // Response header: all at once, and in pieces of `cut` bytes, agree.
    let mut whole = ResponseHeader::default();
    let whole_used = whole.consume(rest);
    let mut pieces = ResponseHeader::default();
    let mut used = 0;
    let mut failed = false;
    for chunk in rest.chunks(usize::from(cut).max(1)) {
        if pieces.done() {
            break;
        }
        match pieces.consume(chunk) {
            Ok(n) => {
                assert!(n <= chunk.len());
                used += n;
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole_used {
        Ok(n) => {
            assert!(!failed);
            assert_eq!(n, used);
            assert_eq!(whole.done(), pieces.done());
        }
        Err(_) => assert!(failed),
    }

    // Request header: a parsed header re-encodes to bytes that parse to the same header
    // (not to the same bytes: addons are skipped, and a name may be re-encoded as an IP).
    if let Ok(Some((h, n))) = parse_request_header(rest) {
        assert!(n <= rest.len());
        if let Some(target) = &h.target {
            let again = request_header(&h.id, h.cmd, target);
            let (h2, m) = parse_request_header(&again)
                .expect("an encoded header parses")
                .expect("an encoded header is complete");
            assert_eq!(m, again.len());
            assert_eq!(format!("{h2:?}"), format!("{h:?}"));
        }
    }
    if let Ok(Some((_, n))) = parse_address_port(rest) {
        assert!(n <= rest.len());
    }

    // UDP framing: datagrams framed, then fed in pieces, come back whole and in order.
    let datagrams: Vec<&[u8]> = rest
        .split(|&b| b == cut)
        .filter(|d| !d.is_empty())
        .collect();
    let mut stream = Vec::new();
    for d in &datagrams {
        stream.extend(frame_udp(d).expect("small datagrams frame"));
    }
    let mut de = UdpDeframer::default();
    let mut out = Vec::new();
    for chunk in stream.chunks(usize::from(cut % 7) + 1) {
        de.push(chunk);
        while let Some(d) = de.next_datagram() {
            out.push(d);
        }
    }
    assert_eq!(out.len(), datagrams.len());
    for (a, b) in out.iter().zip(&datagrams) {
        assert_eq!(a.as_slice(), *b);
    }
    // And raw bytes as a framed stream: no panic.
    let mut raw = UdpDeframer::default();
    raw.push(rest);
    while raw.next_datagram().is_some() {}
});

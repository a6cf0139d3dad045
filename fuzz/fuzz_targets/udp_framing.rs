//! Mux.Cool / XUDP frames from the wire (what a server sends back on a UDP session): no
//! panic however the bytes are cut, the reader never keeps more than it was given, and a
//! frame that parses re-encodes to one that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xhttp_mobile::proxy::mux::{FrameReader, parse_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    if let Ok(Some((frame, n))) = parse_frame(rest) {
        assert!(n <= rest.len());
        if let Ok(bytes) = frame.to_bytes() {
            let (again, m) = parse_frame(&bytes)
                .expect("an encoded frame parses")
                .expect("an encoded frame is complete");
            assert_eq!(m, bytes.len());
            assert_eq!(format!("{again:?}"), format!("{frame:?}"));
        }
    }
    let mut reader = FrameReader::default();
    let mut fed = 0;
    for chunk in rest.chunks(usize::from(cut).max(1)) {
        reader.push(chunk);
        fed += chunk.len();
        loop {
            match reader.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(reader.pending() <= fed);
    }
});

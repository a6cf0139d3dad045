//! `memoryLimits` end to end: the smallest windows and queues the config accepts still move
//! data intact in every mode (SHA-256 both ways), and a bad limit is refused naming it.

mod common;
use common::*;
use serde_json::json;
use xhttp_mobile::{Client, Config, Error};

fn limited(e: &Env, mode: &str, limits: serde_json::Value) -> Client {
    let mut j = e.config_json(json!({"path": "/xh", "mode": mode}));
    j["memoryLimits"] = limits;
    Client::new(Config::from_json(&j).expect("valid config")).expect("client")
}

#[test]
fn the_smallest_limits_still_move_data_intact_in_every_mode() {
    let e = env(|_| {});
    let smallest = json!({"streamReceiveWindow": 16384, "connectionReceiveWindow": 16384,
        "sendWindow": 16384, "downloadQueue": 65536, "uploadQueue": 65536});
    for mode in ["packet-up", "stream-up", "stream-one"] {
        let c = limited(&e, mode, smallest.clone());
        let t = c.open(T).expect("open");
        echo_roundtrip(&t, 2 << 20, mode != "packet-up");
        t.close();
        c.close();
    }
}

#[test]
fn a_stream_window_above_the_connection_window_is_refused_naming_it() {
    let e = env(|_| {});
    let mut j = e.config_json(json!({"path": "/xh"}));
    // Only the stream window: the default connection window (3 MiB, quic-go's) caps it.
    j["memoryLimits"] = json!({"streamReceiveWindow": 64 << 20});
    let err = Config::from_json(&j)
        .and_then(Client::new)
        .err()
        .expect("refused");
    match err {
        Error::Config { field, .. } => assert_eq!(field, "memoryLimits.streamReceiveWindow"),
        other => panic!("{other:?}"),
    }
    j["downloadSettings"] = json!({"address": "127.0.0.1", "port": 1,
        "memoryLimits": {"uploadQueue": 65536}});
    j["memoryLimits"] = json!({});
    match Config::from_json(&j) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "downloadSettings.memoryLimits"),
        other => panic!("{other:?}"),
    }
}

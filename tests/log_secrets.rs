//! No secret reaches the log: a debug-level log of full VLESS transfers in every mode, from
//! a `vless://` link with a pin and obfs padding in the query, plus a failing tunnel, must not
//! contain the VLESS id (any spelling), the pin, the link, a session id or a padding value.
//! The session ids and padding values are the ones the server saw.

mod common;
use common::socks::tcp_echo;
use common::*;
use serde_json::json;
use std::sync::Mutex;
use xhttp_mobile::config::XhttpSettings;
use xhttp_testserver::{Event, Target};

const ID: &str = "5783a3e7-e373-51cd-8642-c83782b807c5";

/// Every record of the process except the test server's (which is the test's own side).
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let t = r.target();
        if t.starts_with("xhttp_testserver") {
            return;
        }
        let line = format!("{} {}: {}", r.level(), t, r.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

/// Padding in the query (so the server's events show it) with tokenish characters (so a
/// value is distinctive), and the session in the query too.
fn padding() -> serde_json::Value {
    json!({"path": "/xh", "xPaddingObfsMode": true, "xPaddingKey": "pad",
        "xPaddingPlacement": "query", "xPaddingMethod": "tokenish", "xPaddingBytes": "40-60",
        "sessionPlacement": "query", "sessionKey": "sid"})
}

fn link(e: &Env, mode: &str, path: &str) -> String {
    let mut extra = padding();
    extra.as_object_mut().unwrap().remove("path");
    let extra = serde_json::to_string(&extra).unwrap();
    let enc: String = extra
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!(
        "vless://{ID}@127.0.0.1:{}?type=xhttp&security=tls&alpn=h3&sni=localhost&pcs={}\
         &path={path}&mode={mode}&encryption=none&extra={enc}#secret-name",
        e.server.addr().port(),
        e.server.cert_sha256_hex()
    )
}

fn query_values(pq: &str, key: &str) -> Vec<String> {
    let q = pq.split_once('?').map_or("", |(_, q)| q);
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .collect()
}

#[test]
fn a_debug_log_of_every_mode_holds_no_secret() {
    log::set_logger(&CAPTURE).expect("the test's logger is the process's");
    log::set_max_level(log::LevelFilter::Debug);

    let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
    let settings = XhttpSettings::from_json("xhttpSettings", &padding()).unwrap();
    let e = env(|o| {
        o.target = Target::Vless { id };
        o.settings = settings;
    });
    let echo = tcp_echo().to_string();
    let mut links = Vec::new();
    for mode in ["packet-up", "stream-up", "stream-one", "auto"] {
        let l = link(&e, mode, "/xh");
        let c = xhttp_mobile::Client::from_json(&l).expect("client from the link");
        let s = c.connect_tcp(&echo, T).expect("VLESS stream");
        let data = pattern(7, 300_000);
        for piece in data.chunks(50_000) {
            assert_eq!(s.write(piece, T).unwrap(), piece.len());
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < data.len() {
            let n = s.read(&mut buf, T).expect("read");
            assert!(n > 0, "{mode}: download ended after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(sha(&got), sha(&data), "{mode}: echo differs");
        s.close();
        c.close();
        links.push(l);
    }
    // A tunnel that fails (wrong path: 404) logs its request's label.
    let l = link(&e, "packet-up", "/wrong");
    let c = xhttp_mobile::Client::from_json(&l).expect("client from the link");
    if let Ok(s) = c.connect_tcp(&echo, T) {
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf, T).is_err(), "a 404 tunnel fails");
    }
    c.close();
    links.push(l);
    // Let connection-close records arrive.
    std::thread::sleep(std::time::Duration::from_millis(300));

    let mut sessions = Vec::new();
    let mut paddings = Vec::new();
    for ev in e.server.events() {
        match ev {
            Event::Request {
                path_and_query: pq, ..
            } => {
                sessions.extend(query_values(&pq, "sid"));
                paddings.extend(query_values(&pq, "pad"));
            }
            Event::UploadEnded {
                session: Some(s), ..
            }
            | Event::DownloadEnded {
                session: Some(s), ..
            } => sessions.push(s),
            _ => {}
        }
    }
    sessions.sort();
    sessions.dedup();
    assert!(
        sessions.len() >= 4,
        "sessions seen by the server: {sessions:?}"
    );
    assert!(
        paddings.len() >= 8,
        "paddings seen by the server: {paddings:?}"
    );

    let log = CAPTURE.0.lock().unwrap().join("\n");
    // The check must have something to look at: the library's own debug records.
    assert!(
        log.contains("xhttp_mobile::"),
        "no library record was captured:\n{log}"
    );
    assert!(
        log.contains("tunnel failed"),
        "the failing tunnel logged:\n{log}"
    );
    let pin = e.server.cert_sha256_hex();
    let mut secrets: Vec<(String, String)> = vec![
        ("VLESS id".into(), ID.into()),
        ("VLESS id (hex)".into(), ID.replace('-', "")),
        ("VLESS id (bytes)".into(), format!("{id:?}")),
        ("pin".into(), pin.to_lowercase()),
        ("pin (upper)".into(), pin.to_uppercase()),
        ("link fragment".into(), "secret-name".into()),
    ];
    secrets.extend(links.iter().map(|l| ("link".into(), l.clone())));
    secrets.extend(sessions.iter().map(|s| ("session id".into(), s.clone())));
    secrets.extend(paddings.iter().map(|p| ("padding".into(), p.clone())));
    for (what, value) in &secrets {
        assert!(!value.is_empty());
        if let Some(line) = log.lines().find(|l| l.contains(value.as_str())) {
            panic!("the log holds a {what} ({value}):\n{line}");
        }
    }
    eprintln!(
        "{} records checked for {} secrets",
        log.lines().count(),
        secrets.len()
    );
}

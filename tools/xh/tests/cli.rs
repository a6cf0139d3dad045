//! `xh socks` and `xh forward` as processes: ready line, traffic, clean exit on a signal.

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::socks::*;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use xhttp_testserver::Target;

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

/// Starts `xh` and waits for its `listening on ADDR` line.
fn start_xh(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xh"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("xh did not start: stdout {line:?}, stderr {err:?}");
    };
    (child, addr.parse().unwrap())
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig}");
}

/// Waits (bounded) for the exit; returns the status and stderr.
fn wait_exit(mut child: Child) -> (ExitStatus, String) {
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("xh did not exit within 10 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn xh_socks_serves_until_sigterm_and_closes_flows() {
    let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
    let e = env(|o| o.target = Target::Vless { id });
    let mut cfg = e.config_json(json!({"path": "/xh", "mode": "stream-up"}));
    cfg["vlessId"] = ID.into();
    let cfg = cfg.to_string();
    let (child, addr) = start_xh(&[
        "socks",
        "--config",
        &cfg,
        "--listen",
        "127.0.0.1:0",
        "--user",
        "u",
        "--pass",
        "p",
    ]);
    let echo = tcp_echo();
    let mut s = connect(addr, echo, Some(("u", "p")));
    echo_once(&mut s, b"through xh socks");

    signal(&child, "-TERM");
    let (status, err) = wait_exit(child);
    assert!(status.success(), "exit {status}, stderr {err}");
    assert!(err.contains("SIGTERM: stopped"), "stderr {err}");
    assert!(is_closed(&mut s), "open flow closed on stop");
}

#[test]
fn xh_forward_reads_a_config_file_and_stops_on_sigint() {
    let e = env(|_| {});
    let cfg = e.config_json(json!({"path": "/xh", "mode": "packet-up"}));
    let path = std::env::temp_dir().join(format!("xh-forward-{}.json", std::process::id()));
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (child, addr) = start_xh(&[
        "forward",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    echo_once(&mut s, &pattern(3, 100_000));

    signal(&child, "-INT");
    let (status, err) = wait_exit(child);
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "exit {status}, stderr {err}");
    assert!(err.contains("SIGINT: stopped"), "stderr {err}");
}

#[test]
fn xh_probe_prints_each_measurement_and_names_a_refusal() {
    let e = env(|_| {});
    let run = |xhttp: serde_json::Value| {
        Command::new(env!("CARGO_BIN_EXE_xh"))
            .args(["probe", "--count", "2", "--config"])
            .arg(e.config_json(xhttp).to_string())
            .output()
            .unwrap()
    };
    let out = run(json!({"path": "/xh", "mode": "stream-one"}));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].starts_with("probe 2: connect ") && lines[1].contains(" ms, round trip "));
    let out = run(json!({"path": "/elsewhere"}));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("probe 1") && err.contains("404"), "{err}");
}

#[test]
fn xh_names_what_is_wrong_with_its_arguments() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xh"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let l = ["--listen", "127.0.0.1:0"];
    let err = run(&["socks", "--config", "/no/such/file.json", l[0], l[1]]);
    assert!(err.contains("no such file, and not inline JSON"), "{err}");
    let err = run(&[
        "socks",
        "--config",
        r#"{"address": "x", "port": 0}"#,
        l[0],
        l[1],
    ]);
    assert!(err.contains("`port`"), "{err}");
    let err = run(&["forward", "--config", r#"{"address": "x", "port": 1}"#]);
    assert!(err.contains("--listen"), "{err}");
    let err = run(&["socks", "--config", "{}", l[0], l[1], "--user", "u"]);
    assert!(err.contains("--user and --pass"), "{err}");
}

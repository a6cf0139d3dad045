//! `xh`: the command-line tool.
//!
//! - `xh demo [--mib N]`: starts the in-repo XHTTP/H3 test server on loopback (self-signed
//!   certificate, trusted by pin), moves N MiB (default 16) each way through one tunnel per
//!   mode, checks SHA-256 both ways and prints `<mode> ok <bytes> bytes <MB/s> MB/s`.
//! - `xh serve [--listen ADDR] [--vless UUID]`: runs the test server until killed and prints
//!   a client config for it. Its target is an echo, or with `--vless` a VLESS inbound that
//!   connects where each flow asks (TCP, UDP, XUDP; loopback included: a test server).
//! - `xh socks --config <file|json> --listen ADDR [--user U --pass P] [--allow-open]`: a
//!   local SOCKS5 inbound (VLESS flows with `vlessId`, raw tunnels without) until
//!   SIGINT/SIGTERM; a listen address that is not loopback needs credentials or
//!   `--allow-open`.
//! - `xh forward --config <file|json> --listen ADDR [--to HOST:PORT]`: each accepted TCP
//!   connection becomes one tunnel (raw; VLESS to `--to` when the config has `vlessId`).
//! - `xh probe --config <file|json> [--count N]`: times connecting and the mode's first
//!   request N times (default 3) on fresh connections; prints one line each.
//! - `xh tun --config <file|json> (--dev NAME | --fd N) [--mtu 1500] [--options JSON]`
//!   (Linux): carries every TCP and UDP flow of a TUN device through the client (it must
//!   carry VLESS) until SIGINT/SIGTERM, then prints the TUN's counters. `--dev` creates the
//!   device (root); its addresses and routes are yours to set, and the server's own address
//!   must not be routed into it. `--options`: see docs/tun.md.
//!
//! `socks` and `forward` print `listening on ADDR`, `tun` prints `tun running on DEV`, once
//! ready; each exits 0 after a clean stop.
//!
//! Every command takes `--log LEVEL` (`off`, `error`, `warn`, `info`, `debug`, `trace`;
//! default `warn`): the library's log goes to stderr, so a flow that fails says why.
//! Without `--log`, `RUST_LOG` is honoured (`LEVEL` or `target=LEVEL,…`).

use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xhttp_mobile::{Client, Config, Error, Inbound};
use xhttp_testserver::{ServerOptions, Target, TestServer};

const USAGE: &str = "usage:
  xh demo [--mib N]
  xh serve [--listen 127.0.0.1:PORT] [--vless UUID]
  xh socks --config <file|json> --listen 127.0.0.1:PORT [--user U --pass P] [--allow-open]
  xh forward --config <file|json> --listen 127.0.0.1:PORT [--to HOST:PORT]
  xh probe --config <file|json> [--count N]
  xh tun --config <file|json> (--dev NAME | --fd N) [--mtu 1500] [--options JSON]
every command: [--log off|error|warn|info|debug|trace] (default warn; else RUST_LOG)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = stderr_log::init(flag(&args, "--log")) {
        eprintln!("xh: {e}");
        return ExitCode::from(2);
    }
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("socks") => socks(&args[1..]),
        Some("forward") => forward(&args[1..]),
        Some("probe") => probe(&args[1..]),
        Some("tun") => tun(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xh: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `--config`: a file, inline JSON or a `vless://` link; the JSON may be the library's own,
/// an Xray outbound or a whole Xray config.
fn load_config(arg: &str) -> xhttp_mobile::Result<Config> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Other(format!("--config {arg}: {e}")))?;
        return xhttp_mobile::config::xray::import(&text);
    }
    let t = arg.trim_start();
    if t.starts_with('{') || t.to_ascii_lowercase().starts_with("vless://") {
        return xhttp_mobile::config::xray::import(arg);
    }
    Err(Error::Other(format!(
        "--config {arg:?}: no such file, and not inline JSON or a vless:// link"
    )))
}

fn listen_flag(args: &[String]) -> Result<SocketAddr, String> {
    let listen = flag(args, "--listen").ok_or("--listen ADDR is required")?;
    listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}"))
}

fn client_from_flags(args: &[String]) -> Result<Client, String> {
    let arg = flag(args, "--config").ok_or("--config <file|json> is required")?;
    let cfg = load_config(arg).map_err(|e| e.to_string())?;
    Client::new(cfg).map_err(|e| e.to_string())
}

fn socks(args: &[String]) -> Result<bool, String> {
    let listen = listen_flag(args)?;
    let auth = match (flag(args, "--user"), flag(args, "--pass")) {
        (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
        (None, None) => None,
        _ => return Err("--user and --pass go together".into()),
    };
    let client = client_from_flags(args)?;
    let opts = xhttp_mobile::proxy::socks::SocksOptions {
        auth,
        allow_open: args.iter().any(|a| a == "--allow-open"),
        ..xhttp_mobile::proxy::socks::SocksOptions::from_policy(&client.dialer().config().policy)
    };
    let inbound = client
        .start_socks_with(listen, opts)
        .map_err(|e| e.to_string())?;
    run_until_signal(&client, inbound)
}

fn forward(args: &[String]) -> Result<bool, String> {
    let listen = listen_flag(args)?;
    let client = client_from_flags(args)?;
    let inbound = client
        .start_forward(listen, flag(args, "--to"))
        .map_err(|e| e.to_string())?;
    run_until_signal(&client, inbound)
}

/// Probes the config `--count` times; fails on the first error.
fn probe(args: &[String]) -> Result<bool, String> {
    let count: u32 = match flag(args, "--count") {
        Some(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("--count {n:?}: a positive number"))?,
        None => 3,
    };
    let client = client_from_flags(args)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for i in 1..=count {
        let p = client
            .probe(Some(Duration::from_secs(10)))
            .map_err(|e| format!("probe {i}: {e}"))?;
        println!(
            "probe {i}: connect {:.1} ms, round trip {:.1} ms",
            ms(p.connect),
            ms(p.round_trip)
        );
    }
    Ok(true)
}

/// Announces the address, waits for SIGINT or SIGTERM, then stops the inbound (closing every
/// flow) and the client.
fn run_until_signal(client: &Client, inbound: Inbound) -> Result<bool, String> {
    let signal = wait_for_signal(&format!("listening on {}", inbound.local_addr()))?;
    inbound.stop();
    client.close();
    eprintln!("xh: {signal}: stopped");
    Ok(true)
}

/// Prints `ready` once the signal handlers are in place, then waits for SIGINT or SIGTERM
/// and names it.
fn wait_for_signal(ready: &str) -> Result<&'static str, String> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .map_err(|e| format!("installing signal handlers: {e}"))?;
        // Handlers are installed: only now is it safe to say we are ready.
        println!("{ready}");
        let _ = std::io::stdout().flush();
        match signals.forever().next() {
            Some(SIGTERM) => Ok("SIGTERM"),
            Some(_) => Ok("SIGINT"),
            None => Err("waiting for a signal: the handler closed".into()),
        }
    }
    #[cfg(not(unix))]
    {
        // No signals to wait for: run until the process is killed.
        println!("{ready}");
        let _ = std::io::stdout().flush();
        loop {
            std::thread::park();
        }
    }
}

/// `xh tun`: a TUN device (created by name, or an fd inherited from the caller) carried by
/// the library until a signal.
#[cfg(target_os = "linux")]
fn tun(args: &[String]) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let mtu: usize = match flag(args, "--mtu") {
        None => 1500,
        Some(m) => m
            .parse()
            .map_err(|_| format!("--mtu {m:?}: not a number"))?,
    };
    let opts = xhttp_mobile::tun::TunOptions::from_json(mtu, flag(args, "--options").unwrap_or(""))
        .map_err(|e| format!("--options: {e}"))?;
    // The device fd stays open (and the device with it) until xh exits.
    let (fd, name, _dev) = match (flag(args, "--dev"), flag(args, "--fd")) {
        (Some(name), None) => {
            let dev = xhttp_mobile::tun::linux::create_device(name).map_err(|e| e.to_string())?;
            (dev.as_raw_fd(), name.to_string(), Some(dev))
        }
        (None, Some(n)) => {
            let fd: i32 = n.parse().map_err(|_| format!("--fd {n:?}: not a number"))?;
            (fd, format!("fd {fd}"), None)
        }
        _ => return Err("give one of --dev NAME or --fd N".into()),
    };
    let client = client_from_flags(args)?;
    let tun = client
        .start_tun(xhttp_mobile::tun::PacketIo::Fd(fd), opts)
        .map_err(|e| e.to_string())?;
    let signal = wait_for_signal(&format!("tun running on {name}"))?;
    tun.stop();
    eprintln!(
        "xh: {signal}: stopped; {}",
        serde_json::to_string(&tun.stats()).unwrap_or_default()
    );
    client.close();
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn tun(_args: &[String]) -> Result<bool, String> {
    Err("xh tun runs on Linux only (apps on Android and iOS use the library's TUN API)".into())
}

fn server_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("xh-server")
        .enable_all()
        .build()
        .map_err(|e| format!("server runtime: {e}"))
}

fn client_json(server: &TestServer, path: &str, mode: &str) -> String {
    serde_json::json!({
        "address": server.addr().ip().to_string(),
        "port": server.addr().port(),
        "tlsSettings": {
            "serverName": "localhost",
            "pinnedPeerCertSha256": server.cert_sha256_hex(),
            "disableSystemRoot": true
        },
        "xhttpSettings": { "path": path, "mode": mode }
    })
    .to_string()
}

fn serve(args: &[String]) -> Result<bool, String> {
    let listen = flag(args, "--listen").unwrap_or("127.0.0.1:0");
    let bind = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}"))?;
    let vless = flag(args, "--vless")
        .map(|id| {
            xhttp_mobile::proxy::vless::user_id("--vless", id)
                .map(|bytes| (id.to_string(), bytes))
                .map_err(|e| e.to_string())
        })
        .transpose()?;
    let rt = server_runtime()?;
    let server = rt.block_on(async {
        let mut o = ServerOptions::default();
        o.settings.path = "/xh".into();
        o.bind = bind;
        o.target = match &vless {
            Some((_, id)) => Target::Vless { id: *id },
            None => Target::Echo,
        };
        TestServer::start(o)
            .await
            .map_err(|e| format!("server: {e}"))
    })?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&client_json(&server, "/xh", "auto")).expect("our own JSON");
    if let Some((id, _)) = &vless {
        cfg["vlessId"] = id.as_str().into();
    }
    println!("{cfg}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn demo(args: &[String]) -> Result<bool, String> {
    let mib: usize = flag(args, "--mib")
        .unwrap_or("16")
        .parse()
        .map_err(|_| "--mib needs a number".to_string())?;
    let rt = server_runtime()?;
    let server = rt.block_on(async {
        let mut o = ServerOptions::default();
        o.settings.path = "/xh".into();
        o.target = Target::Echo;
        TestServer::start(o)
            .await
            .map_err(|e| format!("server: {e}"))
    })?;
    let mut all_ok = true;
    for mode in ["packet-up", "stream-up", "stream-one"] {
        match run_mode(&server, mode, mib * 1024 * 1024) {
            Ok((bytes, secs)) => println!(
                "{mode} ok {bytes} bytes {:.1} MB/s",
                bytes as f64 / 1e6 / secs
            ),
            Err(e) => {
                all_ok = false;
                println!("{mode} FAIL {e}");
            }
        }
    }
    server.shutdown();
    Ok(all_ok)
}

/// Moves `size` bytes up and back down through one tunnel; returns bytes and seconds.
fn run_mode(server: &TestServer, mode: &str, size: usize) -> Result<(usize, f64), String> {
    let cfg =
        Config::from_json_str(&client_json(server, "/xh", mode)).map_err(|e| e.to_string())?;
    let client = Client::new(cfg).map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(60));
    let start = Instant::now();
    let tunnel = client.open(timeout).map_err(|e| e.to_string())?;
    let writer = {
        let t = tunnel.clone();
        let stream_mode = mode != "packet-up";
        std::thread::spawn(move || -> Result<[u8; 32], String> {
            let mut h = Sha256::new();
            let mut pat = Pattern::new(0x5eed ^ size as u64);
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len());
                pat.fill(&mut buf[..n]);
                h.update(&buf[..n]);
                t.write(&buf[..n], timeout)
                    .map_err(|e| format!("write: {e}"))?;
                left -= n;
            }
            if stream_mode {
                t.shutdown_write()
                    .map_err(|e| format!("shutdown_write: {e}"))?;
            }
            Ok(h.finalize().into())
        })
    };
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while got < size {
        let n = tunnel
            .read(&mut buf, timeout)
            .map_err(|e| format!("read after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("download ended after {got} of {size} bytes"));
        }
        h.update(&buf[..n]);
        got += n;
    }
    let up = writer.join().map_err(|_| "writer panicked".to_string())??;
    let secs = start.elapsed().as_secs_f64();
    tunnel.close();
    client.close();
    let down: [u8; 32] = h.finalize().into();
    if up != down {
        return Err(format!(
            "SHA-256 mismatch: sent {} received {}",
            hex::encode(up),
            hex::encode(down)
        ));
    }
    Ok((got, secs))
}

/// A fast deterministic byte pattern (xorshift64*), so the demo needs no data files.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The library's `log` records on stderr, filtered by `--log` or `RUST_LOG`.
mod stderr_log {
    use log::{LevelFilter, Log, Metadata, Record};
    use std::io::Write;
    use std::time::{SystemTime, UNIX_EPOCH};

    struct Stderr {
        default: LevelFilter,
        /// `(target prefix, level)`, longest prefix first.
        targets: Vec<(String, LevelFilter)>,
    }

    impl Stderr {
        fn level_for(&self, target: &str) -> LevelFilter {
            self.targets
                .iter()
                .find(|(t, _)| target.starts_with(t.as_str()))
                .map_or(self.default, |(_, l)| *l)
        }
    }

    impl Log for Stderr {
        fn enabled(&self, m: &Metadata) -> bool {
            m.level() <= self.level_for(m.target())
        }

        fn log(&self, r: &Record) {
            if !self.enabled(r.metadata()) {
                return;
            }
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let _ = writeln!(
                std::io::stderr().lock(),
                "{}.{:03} {:5} {}: {}",
                t.as_secs(),
                t.subsec_millis(),
                r.level(),
                r.target(),
                r.args()
            );
        }

        fn flush(&self) {}
    }

    fn level(s: &str) -> Result<LevelFilter, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("log level {s:?}: use off, error, warn, info, debug or trace"))
    }

    /// `spec`: `LEVEL` or `target=LEVEL` items, comma-separated (RUST_LOG's common form).
    fn parse(spec: &str) -> Result<Stderr, String> {
        let mut out = Stderr {
            default: LevelFilter::Warn,
            targets: Vec::new(),
        };
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((t, l)) => out.targets.push((t.trim().replace('-', "_"), level(l)?)),
                None => out.default = level(item)?,
            }
        }
        out.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(out)
    }

    /// `--log` wins over `RUST_LOG`; neither: warnings and errors.
    pub fn init(flag: Option<&str>) -> Result<(), String> {
        let spec = match flag {
            Some(f) => f.to_string(),
            None => std::env::var("RUST_LOG").unwrap_or_default(),
        };
        let logger = parse(&spec).map_err(|e| match flag {
            Some(_) => format!("--log: {e}"),
            None => format!("RUST_LOG: {e}"),
        })?;
        let max = logger
            .targets
            .iter()
            .map(|(_, l)| *l)
            .chain([logger.default])
            .max()
            .unwrap_or(LevelFilter::Warn);
        log::set_logger(Box::leak(Box::new(logger))).map_err(|e| format!("logger: {e}"))?;
        log::set_max_level(max);
        Ok(())
    }
}

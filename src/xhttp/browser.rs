//! Browser-like default headers (protocol doc §2.3), as Xray v26.7's `TryDefaultHeadersWith`
//! with the `fetch` variant: with no `User-Agent`, or one of the magic words `chrome`,
//! `firefox`, `safari`, `edge`, `curl`, `golang` (matched exactly, as Xray does), requests look
//! like that browser's `fetch()`; any other `User-Agent` adds nothing.
//!
//! Versions follow the calendar with Xray's formulas. Xray draws each one's lag from a PRNG
//! seeded with CPU information, so it is stable per machine; we draw it once per process,
//! which is as stable while the app runs and spreads the same way across devices.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The User-Agent values that select a browser profile.
const MAGIC: [&str; 6] = ["chrome", "firefox", "safari", "edge", "curl", "golang"];

/// Days since the Unix epoch, now.
fn today() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    secs.div_euclid(86_400)
}

/// Days since the Unix epoch of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil year of a day count.
fn year_of(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// One random draw in [0, 1) per browser, made once per process (see the module comment).
fn lag(slot: &'static OnceLock<f64>) -> f64 {
    *slot.get_or_init(rand::random::<f64>)
}

/// Chrome's major version on day `day` with lag draw `r`: 144 on 2026-01-13, one step per
/// 35 days, 35 days late and up to 105 more (Xray's `ChromeVersion`).
fn chrome_version_on(day: i64, r: f64) -> i64 {
    let diff = day - days_from_civil(2026, 1, 13) - 35 - (r * r * 105.0).floor() as i64;
    // Go's integer division truncates toward zero; so does Rust's.
    144 + diff / 35
}

/// Firefox's version: 128 on 2024-07-29, one step per 30 days, 25 days late and up to 50
/// more (Xray's `FirefoxVersion`).
fn firefox_version_on(day: i64, r: f64) -> i64 {
    let diff = day - days_from_civil(2024, 7, 29) - 25 - (r * r * 50.0).floor() as i64;
    diff / 30 + 128
}

/// curl's version `8.N.0`: 8.0.0 on 2023-03-20, one minor per 57 days, 60 days late and up
/// to 165 more (Xray's `CurlVersion`).
fn curl_version_on(day: i64, r: f64) -> String {
    let diff = day - days_from_civil(2023, 3, 20) - 60 - (r * r * 165.0).floor() as i64;
    format!("8.{}.0", diff / 57)
}

/// Safari's version `YY.M` at `secs` (Unix time): a major release every September 23 plus
/// up to 75 days, minors by Xray's table in 15-day steps (Xray's `SafariVersion`).
fn safari_version_at(secs: i64, r: f64) -> String {
    const MINOR: [i64; 25] = [
        0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 6,
    ];
    let delayed = (r * r * r * 75.0).floor() as i64;
    let split = |year: i64| (days_from_civil(year, 9, 23) + delayed) * 86_400;
    let mut year = year_of(secs.div_euclid(86_400));
    if secs < split(year) {
        year -= 1;
    }
    let step = ((secs - split(year)) / 1_296_000).clamp(0, 24) as usize;
    format!("{}.{}", year - 1999, MINOR[step])
}

/// Chrome's major version today, stable for the process.
pub fn chrome_version() -> u32 {
    static R: OnceLock<f64> = OnceLock::new();
    chrome_version_on(today(), lag(&R)).max(1) as u32
}

fn firefox_version() -> i64 {
    static R: OnceLock<f64> = OnceLock::new();
    firefox_version_on(today(), lag(&R))
}

fn curl_version() -> String {
    static R: OnceLock<f64> = OnceLock::new();
    curl_version_on(today(), lag(&R))
}

fn safari_version() -> String {
    static R: OnceLock<f64> = OnceLock::new();
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    safari_version_at(secs, lag(&R))
}

fn chrome_ua(v: u32) -> String {
    format!(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"
    )
}

/// Applies the default headers to `headers` (name, value) in place.
pub fn apply_defaults(headers: &mut Vec<(String, String)>) {
    let ua = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        .map(|(_, v)| v.as_str());
    let browser = match ua {
        None => "chrome",
        Some(v) => match MAGIC.iter().find(|m| **m == v) {
            Some(m) => *m,
            None => return,
        },
    };
    let mut set = |k: &str, val: String| {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        headers.push((k.to_string(), val));
    };
    match browser {
        "chrome" | "edge" => {
            let v = chrome_version();
            let (brand, ua) = if browser == "edge" {
                // Xray appends the Edge token without a space; so do we.
                ("Microsoft Edge", format!("{}Edg/{v}.0.0.0", chrome_ua(v)))
            } else {
                ("Google Chrome", chrome_ua(v))
            };
            set("Sec-CH-UA", sec_ch_ua(v, brand));
            set("Sec-CH-UA-Mobile", "?0".into());
            set("Sec-CH-UA-Platform", "\"Windows\"".into());
            set("DNT", "1".into());
            set("User-Agent", ua);
            set("Accept-Language", "en-US,en;q=0.9".into());
        }
        "firefox" => {
            let fv = firefox_version();
            set(
                "User-Agent",
                format!(
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{fv}.0) Gecko/20100101 Firefox/{fv}.0"
                ),
            );
            set("DNT", "1".into());
            set("Accept-Language", "en-US,en;q=0.5".into());
        }
        "safari" => {
            set(
                "User-Agent",
                format!(
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{} Safari/605.1.15",
                    safari_version()
                ),
            );
            set("Accept-Language", "en-US,en;q=0.9".into());
        }
        "curl" => {
            set("User-Agent", format!("curl/{}", curl_version()));
            return;
        }
        // golang: no User-Agent of ours (the HTTP/3 client's default goes out) and nothing
        // else.
        _ => {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("user-agent"));
            return;
        }
    }
    set("Sec-Fetch-Mode", "cors".into());
    set("Sec-Fetch-Dest", "empty".into());
    set("Sec-Fetch-Site", "same-origin".into());
    let priority = match browser {
        "firefox" => "u=4",
        "safari" => "u=3, i",
        _ => "u=1, i",
    };
    // Go's `Header.Get(k) == ""`: absent or empty.
    let mut set_if_absent = |k: &str, val: &str| {
        if !headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(k) && !v.is_empty())
        {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
            headers.push((k.to_string(), val.to_string()));
        }
    };
    set_if_absent("Priority", priority);
    set_if_absent("Cache-Control", "no-cache");
    set_if_absent("Pragma", "no-cache");
    set_if_absent("Accept", "*/*");
}

/// Chrome's GREASEd brand list for major version `v`: the "Not…A…Brand" entry, Chromium
/// and the browser, in the order Chrome derives from the version (Xray's
/// `getGreasedChUa`: permutation `v % 6` of the three, applied as a scatter).
fn sec_ch_ua(v: u32, brand: &str) -> String {
    const GREASE: [&str; 11] = [" ", "(", ":", "-", ".", "/", ")", ";", "=", "?", "_"];
    const GREASE_VERSION: [&str; 3] = ["8", "99", "24"];
    const SHUFFLE3: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let v = v as usize;
    let brands = [
        format!(
            "\"Not{}A{}Brand\";v=\"{}\"",
            GREASE[v % GREASE.len()],
            GREASE[(v + 1) % GREASE.len()],
            GREASE_VERSION[v % GREASE_VERSION.len()]
        ),
        format!("\"Chromium\";v=\"{v}\""),
        format!("\"{brand}\";v=\"{v}\""),
    ];
    let mut out = [const { String::new() }; 3];
    for (i, &to) in SHUFFLE3[v % SHUFFLE3.len()].iter().enumerate() {
        out[to] = brands[i].clone();
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    fn secs(y: i64, m: i64, d: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400
    }

    #[test]
    fn calendar_helpers() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 1, 13), 20_466);
        for (y, m, d) in [(2024, 2, 29), (2025, 12, 31), (2026, 1, 1), (2000, 3, 1)] {
            assert_eq!(year_of(days_from_civil(y, m, d)), y);
        }
    }

    #[test]
    fn versions_follow_xrays_formulas() {
        let day = days_from_civil(2026, 8, 30);
        // 229 days after the anchor: (229 - 35 - lag) / 35.
        assert_eq!(chrome_version_on(day, 0.0), 144 + 194 / 35);
        assert_eq!(chrome_version_on(day, 0.999), 144 + (194 - 104) / 35);
        assert_eq!(firefox_version_on(day, 0.0), 128 + (762 - 25) / 30);
        assert_eq!(
            curl_version_on(day, 0.0),
            format!("8.{}.0", (1259 - 60) / 57)
        );
        // Safari: 26.x from late September 2025, 27.0 once September 2026 is over.
        assert_eq!(safari_version_at(secs(2026, 8, 30), 0.0), "26.6");
        assert_eq!(safari_version_at(secs(2026, 9, 24), 0.0), "27.0");
        assert_eq!(safari_version_at(secs(2026, 9, 24), 0.999), "26.5");
        assert_eq!(safari_version_at(secs(2026, 1, 2), 0.0), "26.2");
    }

    #[test]
    fn brand_order_is_chromes_permutation_of_the_version() {
        // 146 % 6 = 2: permutation [1, 0, 2] scatters (grease, chromium, brand) to
        // (chromium, grease, brand).
        assert_eq!(
            sec_ch_ua(146, "Google Chrome"),
            "\"Chromium\";v=\"146\", \"Not-A.Brand\";v=\"24\", \"Google Chrome\";v=\"146\""
        );
        // 147 % 6 = 3: [1, 2, 0] puts the brand first (values checked against Xray's Go code).
        assert_eq!(
            sec_ch_ua(147, "Google Chrome"),
            "\"Google Chrome\";v=\"147\", \"Not.A/Brand\";v=\"8\", \"Chromium\";v=\"147\""
        );
    }

    #[test]
    fn default_is_chrome() {
        let mut h = vec![];
        apply_defaults(&mut h);
        let ua = get(&h, "User-Agent").unwrap();
        assert_eq!(ua, chrome_ua(chrome_version()));
        assert!(get(&h, "Sec-CH-UA").unwrap().contains("Google Chrome"));
        assert_eq!(get(&h, "Sec-Fetch-Mode"), Some("cors"));
        assert_eq!(get(&h, "Accept"), Some("*/*"));
        assert_eq!(get(&h, "Priority"), Some("u=1, i"));
        assert!(chrome_version() >= 140);
    }

    #[test]
    fn custom_user_agent_adds_nothing() {
        for custom in ["MyApp/1", "Firefox", "CHROME", ""] {
            let mut h = vec![("User-Agent".to_string(), custom.to_string())];
            apply_defaults(&mut h);
            assert_eq!(h, vec![("User-Agent".to_string(), custom.to_string())]);
        }
    }

    #[test]
    fn magic_words_and_user_overrides() {
        let mut h = vec![
            ("user-agent".to_string(), "firefox".to_string()),
            ("Accept".to_string(), "text/html".to_string()),
            ("Pragma".to_string(), String::new()),
        ];
        apply_defaults(&mut h);
        let ua = get(&h, "User-Agent").unwrap();
        assert!(
            ua.ends_with(&format!("Firefox/{}.0", firefox_version())),
            "{ua}"
        );
        assert_eq!(get(&h, "Accept"), Some("text/html"));
        // An empty value counts as absent, as Go's Header.Get sees it.
        assert_eq!(get(&h, "Pragma"), Some("no-cache"));
        assert_eq!(get(&h, "Priority"), Some("u=4"));
        let mut e = vec![("User-Agent".to_string(), "edge".to_string())];
        apply_defaults(&mut e);
        let v = chrome_version();
        assert_eq!(
            get(&e, "User-Agent").unwrap(),
            format!("{}Edg/{v}.0.0.0", chrome_ua(v))
        );
        assert!(get(&e, "Sec-CH-UA").unwrap().contains("Microsoft Edge"));
        let mut s = vec![("User-Agent".to_string(), "safari".to_string())];
        apply_defaults(&mut s);
        assert!(get(&s, "User-Agent").unwrap().contains("Version/"));
        assert_eq!(get(&s, "Priority"), Some("u=3, i"));
        let mut c = vec![("User-Agent".to_string(), "curl".to_string())];
        apply_defaults(&mut c);
        assert_eq!(c.len(), 1);
        assert!(c[0].1.starts_with("curl/8."));
        let mut g = vec![("User-Agent".to_string(), "golang".to_string())];
        apply_defaults(&mut g);
        assert!(g.is_empty());
    }
}

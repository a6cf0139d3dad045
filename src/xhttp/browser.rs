//! Browser-like default headers (protocol doc §2.3): with no `User-Agent`, or a magic one
//! (`chrome`, `firefox`, `safari`, `edge`, `curl`, `golang`), requests look like that
//! browser's `fetch()`; any other `User-Agent` adds nothing.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Chrome major version for today: 144 on 2026-01-13, one step per 35 days, minus a lag of
/// 1–4 drawn once per process (Xray derives it per machine; either way it is stable while
/// the app runs).
pub fn chrome_version() -> u32 {
    static LAG: OnceLock<u32> = OnceLock::new();
    let lag = *LAG.get_or_init(|| rand::random_range(1..=4));
    const ANCHOR: u64 = 1_768_262_400; // 2026-01-13T00:00:00Z
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(ANCHOR);
    let steps = now.saturating_sub(ANCHOR) / (35 * 86_400);
    (144 + steps as u32).saturating_sub(lag)
}

/// Applies the default headers to `headers` (name, value) in place.
pub fn apply_defaults(headers: &mut Vec<(String, String)>) {
    let ua_idx = headers
        .iter()
        .position(|(k, _)| k.eq_ignore_ascii_case("user-agent"));
    let magic = match ua_idx {
        None => "chrome".to_string(),
        Some(i) => headers[i].1.to_ascii_lowercase(),
    };
    let known = ["chrome", "firefox", "safari", "edge", "curl", "golang"];
    if !known.contains(&magic.as_str()) {
        return;
    }
    if let Some(i) = ua_idx {
        headers.remove(i);
    }
    let v = chrome_version();
    let mut set = |k: &str, val: String| {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        headers.push((k.to_string(), val));
    };
    match magic.as_str() {
        "chrome" | "edge" => {
            let (brand, ua_suffix) = if magic == "edge" {
                ("Microsoft Edge", format!(" Edg/{v}.0.0.0"))
            } else {
                ("Google Chrome", String::new())
            };
            set("Sec-CH-UA", sec_ch_ua(v, brand));
            set("Sec-CH-UA-Mobile", "?0".into());
            set("Sec-CH-UA-Platform", "\"Windows\"".into());
            set("DNT", "1".into());
            set(
                "User-Agent",
                format!(
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36{ua_suffix}"
                ),
            );
            set("Accept-Language", "en-US,en;q=0.9".into());
        }
        "firefox" => {
            let fv = v.saturating_sub(2);
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
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.0 Safari/605.1.15".into(),
            );
            set("Accept-Language", "en-US,en;q=0.9".into());
        }
        "curl" => {
            set("User-Agent", "curl/8.17.0".into());
            return;
        }
        // golang: no User-Agent of ours and nothing else.
        _ => return,
    }
    set("Sec-Fetch-Mode", "cors".into());
    set("Sec-Fetch-Dest", "empty".into());
    set("Sec-Fetch-Site", "same-origin".into());
    let priority = match magic.as_str() {
        "firefox" => "u=4",
        "safari" => "u=3, i",
        _ => "u=1, i",
    };
    let mut set_if_absent = |k: &str, val: &str| {
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
            headers.push((k.to_string(), val.to_string()));
        }
    };
    set_if_absent("Priority", priority);
    set_if_absent("Cache-Control", "no-cache");
    set_if_absent("Pragma", "no-cache");
    set_if_absent("Accept", "*/*");
}

/// A GREASEd brand list whose order and spelling vary with the version, as Chrome's does.
fn sec_ch_ua(v: u32, brand: &str) -> String {
    let grease_chars = [" ", "(", ":", "-", ".", "/", ")", ";", "=", "?", "_"];
    let grease_versions = ["8", "99", "24"];
    let g = grease_chars[(v as usize) % grease_chars.len()];
    let g2 = grease_chars[(v as usize + 1) % grease_chars.len()];
    let grease = format!(
        "\"Not{g}A{g2}Brand\";v=\"{}\"",
        grease_versions[(v as usize) % 3]
    );
    let chromium = format!("\"Chromium\";v=\"{v}\"");
    let brand = format!("\"{brand}\";v=\"{v}\"");
    let mut list = [grease, chromium, brand];
    list.rotate_left((v as usize) % 3);
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn default_is_chrome() {
        let mut h = vec![];
        apply_defaults(&mut h);
        let ua = get(&h, "User-Agent").unwrap();
        assert!(
            ua.contains(&format!("Chrome/{}.0.0.0", chrome_version())),
            "{ua}"
        );
        assert!(get(&h, "Sec-CH-UA").unwrap().contains("Google Chrome"));
        assert_eq!(get(&h, "Sec-Fetch-Mode"), Some("cors"));
        assert_eq!(get(&h, "Accept"), Some("*/*"));
        assert_eq!(get(&h, "Priority"), Some("u=1, i"));
        assert!(chrome_version() >= 140);
    }

    #[test]
    fn custom_user_agent_adds_nothing() {
        let mut h = vec![("User-Agent".to_string(), "MyApp/1".to_string())];
        apply_defaults(&mut h);
        assert_eq!(h, vec![("User-Agent".to_string(), "MyApp/1".to_string())]);
    }

    #[test]
    fn magic_words_and_user_overrides() {
        let mut h = vec![
            ("user-agent".to_string(), "Firefox".to_string()),
            ("Accept".to_string(), "text/html".to_string()),
        ];
        apply_defaults(&mut h);
        assert!(get(&h, "User-Agent").unwrap().contains("Firefox/"));
        assert_eq!(get(&h, "Accept"), Some("text/html"));
        assert_eq!(get(&h, "Priority"), Some("u=4"));
        let mut c = vec![("User-Agent".to_string(), "curl".to_string())];
        apply_defaults(&mut c);
        assert_eq!(c.len(), 1);
        assert!(c[0].1.starts_with("curl/8."));
        let mut g = vec![("User-Agent".to_string(), "golang".to_string())];
        apply_defaults(&mut g);
        assert!(g.is_empty());
    }
}

//! The browser origin of a WebSocket upgrade, checked as OpenClaw checks it
//! (`checkBrowserOrigin` in its `origin-check`): a connect that carries an `Origin` header is a
//! browser's, and a page on another site must not use the visitor's browser (and its loopback or
//! LAN position) to reach the gateway. Without an `Origin` header (the CLI, the apps, nodes)
//! nothing is checked, as in OpenClaw.
//!
//! An origin is allowed when it is in `gateway.allowed_origins` (or that holds `"*"`); or when it
//! is the gateway's own host as the browser named it (`Host`) and that host cannot be a
//! rebinding name (an IP address in a private or loopback range, `localhost`, `*.local`,
//! `*.ts.net`; a loopback one only for a local client); or when it is a loopback origin and the
//! client is local and direct (a loopback-local peer, no `Forwarded`/`X-Forwarded-*`/`X-Real-IP`).

use std::net::IpAddr;

/// Why a browser's connect is refused (OpenClaw's `details.reason`).
pub(crate) type Refusal = &'static str;

/// The upgrade request's view of its browser origin, decided once at the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No `Origin` header: not a browser.
    Absent,
    /// A browser whose origin is allowed.
    Allowed,
    /// A browser whose origin is not: its connect is refused.
    Refused(Refusal),
}

/// The request headers the check reads.
pub(crate) struct Request<'h> {
    pub origin: Option<&'h [u8]>,
    pub host: Option<&'h [u8]>,
    /// A proxy header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) is present.
    pub forwarded: bool,
}

/// The headers that say a proxy forwarded the request (then it is not "local direct").
pub(crate) const PROXY_HEADERS: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Decides the verdict for an upgrade from `peer_local` (the peer is this machine,
/// `devices::is_local`) and the configured allow list (lowercase).
pub(crate) fn check(req: &Request<'_>, peer_local: bool, allowed: &[String]) -> Verdict {
    let Some(raw) = req.origin else {
        return Verdict::Absent;
    };
    let Some(origin) = std::str::from_utf8(raw).ok().and_then(parse) else {
        return Verdict::Refused("origin missing or invalid");
    };
    if allowed.iter().any(|a| a == "*" || *a == origin.origin) {
        return Verdict::Allowed;
    }
    let local_direct = peer_local && !req.forwarded;
    let host = req
        .host
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| h.trim().to_ascii_lowercase());
    if host.as_deref() == Some(origin.host.as_str()) && trusted_same_origin(&origin, local_direct) {
        return Verdict::Allowed;
    }
    if local_direct && is_loopback_name(&origin.hostname) {
        return Verdict::Allowed;
    }
    Verdict::Refused("origin not allowed")
}

/// A serialized origin, lowercase: `scheme://host[:port]`.
struct Origin {
    origin: String,
    /// `host[:port]`, the default port left out (as a browser's `Host`).
    host: String,
    /// The host without its port (an IPv6 address without brackets).
    hostname: String,
}

/// `scheme://host[:port]` with an optional trailing `/`; no user info, path, query or fragment;
/// `null` is no origin.
fn parse(raw: &str) -> Option<Origin> {
    let raw = raw.trim().to_ascii_lowercase();
    let (scheme, rest) = raw.split_once("://")?;
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if !valid_scheme || authority.is_empty() || authority.contains(['/', '?', '#', '\\', '@', ' '])
    {
        return None;
    }
    let (hostname, port) = split_port(authority)?;
    let default_port = matches!(
        (scheme, port),
        ("http", Some("80")) | ("https", Some("443"))
    );
    let host = match port {
        Some(p) if default_port => &authority[..authority.len() - p.len() - 1],
        _ => authority,
    }
    .to_owned();
    Some(Origin {
        origin: format!("{scheme}://{host}"),
        host,
        hostname: hostname.to_owned(),
    })
}

/// `(hostname, port)` of `host[:port]` or `[v6][:port]`.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let (hostname, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        (addr, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if hostname.is_empty()
        || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((hostname, port))
}

fn is_loopback_name(hostname: &str) -> bool {
    hostname == "localhost"
        || hostname.ends_with(".localhost")
        || hostname
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The page came from the gateway's own host: allowed when that host name cannot be a DNS
/// rebinding of someone else's site (OpenClaw's `isTrustedSameOriginHost`).
fn trusted_same_origin(origin: &Origin, local_direct: bool) -> bool {
    if is_loopback_name(&origin.hostname) {
        return local_direct;
    }
    match origin.hostname.parse::<IpAddr>() {
        Ok(ip) => is_private(ip.to_canonical()),
        Err(_) => origin.hostname.ends_with(".local") || origin.hostname.ends_with(".ts.net"),
    }
}

/// RFC 1918, shared address space (RFC 6598: tailnets), link-local, IPv6 unique local and link-local.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(
        origin: &str,
        host: &str,
        local: bool,
        forwarded: bool,
        allowed: &[&str],
    ) -> Verdict {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        let req = Request {
            origin: Some(origin.as_bytes()),
            host: Some(host.as_bytes()),
            forwarded,
        };
        check(&req, local, &allowed)
    }

    #[test]
    fn no_origin_is_not_a_browser() {
        let req = Request {
            origin: None,
            host: Some(b"127.0.0.1:18789"),
            forwarded: false,
        };
        assert_eq!(check(&req, false, &[]), Verdict::Absent);
    }

    #[test]
    fn the_gateways_own_loopback_page_is_allowed_only_for_a_local_direct_client() {
        let own = "http://127.0.0.1:18789";
        assert_eq!(
            verdict(own, "127.0.0.1:18789", true, false, &[]),
            Verdict::Allowed
        );
        assert_eq!(
            verdict(own, "127.0.0.1:18789", false, false, &[]),
            Verdict::Refused("origin not allowed")
        );
        assert_eq!(
            verdict(own, "127.0.0.1:18789", true, true, &[]),
            Verdict::Refused("origin not allowed")
        );
        // Another loopback page (a dev server) from this machine, as OpenClaw allows.
        assert_eq!(
            verdict("http://localhost:5173", "127.0.0.1:18789", true, false, &[]),
            Verdict::Allowed
        );
    }

    #[test]
    fn another_site_is_refused_unless_listed() {
        let evil = "https://evil.example";
        assert_eq!(
            verdict(evil, "127.0.0.1:18789", true, false, &[]),
            Verdict::Refused("origin not allowed")
        );
        // A rebinding name pointing at the gateway: same host, but not a trusted name.
        assert_eq!(
            verdict(
                "http://evil.example:18789",
                "evil.example:18789",
                true,
                false,
                &[]
            ),
            Verdict::Refused("origin not allowed")
        );
        assert_eq!(
            verdict(
                evil,
                "127.0.0.1:18789",
                false,
                false,
                &["https://evil.example"]
            ),
            Verdict::Allowed
        );
        assert_eq!(verdict(evil, "x", false, false, &["*"]), Verdict::Allowed);
    }

    #[test]
    fn a_lan_or_tailnet_host_serving_its_own_page_is_allowed() {
        for (origin, host) in [
            ("http://192.168.1.20:18789", "192.168.1.20:18789"),
            ("http://100.101.102.103:18789", "100.101.102.103:18789"),
            ("http://[fd00::1]:18789", "[fd00::1]:18789"),
            ("https://gw.tail1234.ts.net", "gw.tail1234.ts.net"),
            ("http://gateway.local:80", "gateway.local"),
        ] {
            assert_eq!(
                verdict(origin, host, false, true, &[]),
                Verdict::Allowed,
                "{origin}"
            );
        }
        assert_eq!(
            verdict("http://8.8.8.8:18789", "8.8.8.8:18789", false, false, &[]),
            Verdict::Refused("origin not allowed")
        );
    }

    #[test]
    fn malformed_origins_are_refused_as_invalid() {
        for bad in [
            "null",
            "",
            "127.0.0.1",
            "http://a/b",
            "http://u@h",
            "http://h:x",
            "1http://h",
        ] {
            assert_eq!(
                verdict(bad, "h", true, false, &["*"]),
                Verdict::Refused("origin missing or invalid"),
                "{bad}"
            );
        }
    }
}

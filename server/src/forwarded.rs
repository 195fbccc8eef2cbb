//! Which IP a request comes from when it passes through proxies.
//!
//! A proxy names the client in `Forwarded: for=...` (RFC 7239) or `X-Forwarded-For`; anyone
//! can send those headers, so they are believed only from peers listed in `trusted_proxies`.
//! The chain is read from the right (the hop nearest to us) to the left, skipping trusted
//! proxies: the first address that is not a trusted proxy is the client. A hop that does not
//! name an address (`unknown`, an obfuscated identifier) ends the walk at the last trusted hop,
//! so a client can never choose its own IP by sending the header itself.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's IP for a request that arrived from `peer`.
pub fn client_ip(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let chain = chain(headers);
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(trusted, *ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack listener reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarding chain, leftmost (the original client) first. `Forwarded` wins over
/// `X-Forwarded-For` when both are present. `None` marks a hop that names no address.
fn chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| node(value))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(node)
        .collect()
}

/// One node: `192.0.2.60`, `"192.0.2.60:4711"`, `"[2001:db8::17]:4711"`, `2001:db8::17`.
fn node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, _) = rest.split_once(']')?;
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| canonical(IpAddr::V6(ip)));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // `a.b.c.d:port`
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(&[], ip("9.9.9.9"), &h), ip("9.9.9.9"));
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        assert_eq!(client_ip(&trusted, ip("9.9.9.9"), &h), ip("9.9.9.9"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().expect("net"),
            "127.0.0.1/32".parse().expect("net"),
        ];
        let peer = ip("10.0.0.1");
        // The client claims 6.6.6.6 itself; the proxy appended what it saw.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_ip(&trusted, peer, &h), ip("203.0.113.7"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7:5555"),
        ]);
        assert_eq!(client_ip(&trusted, peer, &h), ip("203.0.113.7"));
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.3"#,
        )]);
        assert_eq!(client_ip(&trusted, peer, &h), ip("2001:db8:cafe::17"));
        // Everything trusted: the leftmost hop.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(client_ip(&trusted, peer, &h), ip("10.1.1.1"));
        // No header: the proxy itself.
        assert_eq!(client_ip(&trusted, peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn an_unnamed_hop_stops_the_walk() {
        let trusted = vec!["10.0.0.0/8".parse().expect("net")];
        let peer = ip("10.0.0.1");
        let h = headers(&[("forwarded", "for=1.2.3.4, for=unknown, for=10.0.0.9")]);
        assert_eq!(client_ip(&trusted, peer, &h), ip("10.0.0.9"));
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage")]);
        assert_eq!(client_ip(&trusted, peer, &h), peer);
    }

    #[test]
    fn mapped_ipv6_peers_match_ipv4_networks() {
        let trusted = vec!["127.0.0.0/8".parse().expect("net")];
        let h = headers(&[("x-forwarded-for", "198.51.100.4")]);
        assert_eq!(
            client_ip(&trusted, ip("::ffff:127.0.0.1"), &h),
            ip("198.51.100.4")
        );
    }
}

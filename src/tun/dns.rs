//! The app's DNS: queries to the virtual DNS address(es) the VPN configured (UDP or TCP, port
//! 53) go through the tunnel to the real DNS server; replies come back from the virtual
//! address the app asked, so its resolver accepts them.

use crate::proxy::vless::{Host, Target};
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Debug, PartialEq)]
pub struct DnsRedirect {
    virtual_addrs: Vec<IpAddr>,
    server: Target,
}

impl DnsRedirect {
    /// `server` must be an IP destination (the options refuse names).
    pub fn new(virtual_addrs: Vec<IpAddr>, server: Target) -> DnsRedirect {
        DnsRedirect {
            virtual_addrs,
            server,
        }
    }

    pub fn server(&self) -> &Target {
        &self.server
    }

    /// Where a flow to `dst` really goes when `dst` is a virtual DNS address on port 53.
    pub fn redirect(&self, dst: SocketAddr) -> Option<&Target> {
        (dst.port() == 53 && self.virtual_addrs.contains(&dst.ip())).then_some(&self.server)
    }
}

/// The source a UDP reply from `from` carries back to the app: the virtual address the app
/// asked when the reply comes from the DNS server for a query it sent there, else `from`
/// itself. `None` (dropped) when it cannot be written as a packet to an app socket of family
/// `local`: a reply naming a domain, or of the other IP family.
pub fn reply_source(
    from: &Target,
    dns: Option<(&DnsRedirect, SocketAddr)>,
    local: SocketAddr,
) -> Option<SocketAddr> {
    let src = match (dns, &from.host) {
        (Some((d, asked)), _) if *from == d.server => asked,
        (_, Host::Ip(ip)) => SocketAddr::new(*ip, from.port),
        (_, Host::Domain(_)) => return None,
    };
    // An IPv4-mapped IPv6 source still answers an IPv4 socket.
    let src = match src {
        SocketAddr::V6(a) if local.is_ipv4() => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => return None,
        },
        s => s,
    };
    (src.is_ipv4() == local.is_ipv4()).then_some(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_port_53_on_a_virtual_address_is_redirected() {
        let d = DnsRedirect::new(
            vec!["198.18.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            t("10.9.9.9:53"),
        );
        assert_eq!(d.redirect(a("198.18.0.2:53")), Some(&t("10.9.9.9:53")));
        assert_eq!(d.redirect(a("[fd00::2]:53")), Some(&t("10.9.9.9:53")));
        assert_eq!(d.redirect(a("198.18.0.2:54")), None);
        assert_eq!(d.redirect(a("198.18.0.3:53")), None);
        assert_eq!(d.redirect(a("10.9.9.9:53")), None);
    }

    #[test]
    fn replies_carry_the_address_the_app_asked() {
        let d = DnsRedirect::new(vec!["198.18.0.2".parse().unwrap()], t("10.9.9.9:53"));
        let local = a("10.0.0.2:5000");
        let asked = a("198.18.0.2:53");
        // From the DNS server, for a query sent to the virtual address.
        assert_eq!(
            reply_source(&t("10.9.9.9:53"), Some((&d, asked)), local),
            Some(asked)
        );
        // Anyone else (full cone), or no query to the virtual address: its own address.
        assert_eq!(
            reply_source(&t("10.1.1.1:53"), Some((&d, asked)), local),
            Some(a("10.1.1.1:53"))
        );
        assert_eq!(
            reply_source(&t("10.9.9.9:53"), None, local),
            Some(a("10.9.9.9:53"))
        );
        // What no IPv4 packet can carry.
        assert_eq!(reply_source(&t("example.com:53"), None, local), None);
        assert_eq!(reply_source(&t("[2001:db8::1]:53"), None, local), None);
        assert_eq!(
            reply_source(&t("[::ffff:10.1.1.1]:53"), None, local),
            Some(a("10.1.1.1:53"))
        );
        assert_eq!(
            reply_source(&t("10.1.1.1:53"), None, a("[fd00::5]:5000")),
            None
        );
    }
}

//! What a TUN has carried and dropped, counted as it happens (relaxed atomics: each counter
//! is exact, a snapshot is not one instant across counters).

use super::packet::Drop;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counters {
    pub tcp_active: AtomicU64,
    pub udp_active: AtomicU64,
    pub tcp_total: AtomicU64,
    pub udp_total: AtomicU64,
    pub dns_total: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_fragment: AtomicU64,
    pub drop_protocol: AtomicU64,
    pub drop_ipv6_off: AtomicU64,
    pub drop_input_full: AtomicU64,
    pub drop_output_full: AtomicU64,
    pub drop_udp: AtomicU64,
    pub evicted: AtomicU64,
    pub open_failed: AtomicU64,
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn dropped(&self, why: Drop) {
        add(
            match why {
                Drop::Malformed => &self.drop_malformed,
                Drop::Oversized => &self.drop_oversized,
                Drop::Fragment => &self.drop_fragment,
                Drop::Protocol => &self.drop_protocol,
                Drop::Ipv6Off => &self.drop_ipv6_off,
            },
            1,
        );
    }

    pub fn snapshot(&self) -> TunStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TunStats {
            tcp_flows: g(&self.tcp_active),
            udp_flows: g(&self.udp_active),
            tcp_flows_total: g(&self.tcp_total),
            udp_flows_total: g(&self.udp_total),
            dns_queries: g(&self.dns_total),
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
            packets_in: g(&self.packets_in),
            packets_out: g(&self.packets_out),
            dropped: Dropped {
                malformed: g(&self.drop_malformed),
                oversized: g(&self.drop_oversized),
                fragment: g(&self.drop_fragment),
                protocol: g(&self.drop_protocol),
                ipv6_off: g(&self.drop_ipv6_off),
                input_full: g(&self.drop_input_full),
                output_full: g(&self.drop_output_full),
                udp: g(&self.drop_udp),
            },
            flows_evicted: g(&self.evicted),
            flows_open_failed: g(&self.open_failed),
        }
    }
}

/// A TUN's counters (`xh_tun_stats` copies them into `xh_tun_counters`; `xh tun` prints
/// them as JSON with these names, camelCase).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunStats {
    /// Flows open now, by kind.
    pub tcp_flows: u64,
    pub udp_flows: u64,
    /// Flows opened since start, by kind; DNS queries redirected (UDP datagrams and TCP
    /// connections to the virtual DNS address).
    pub tcp_flows_total: u64,
    pub udp_flows_total: u64,
    pub dns_queries: u64,
    /// Payload bytes: up = from the app, down = to the app.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// IP packets read from / written to the device.
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped: Dropped,
    /// Flows ended to make room under `maxFlows`.
    pub flows_evicted: u64,
    /// TCP flows whose tunnel did not open, or whose destination refused them (the server
    /// ended the flow without a byte); the app's connection was reset.
    pub flows_open_failed: u64,
}

/// Packets and datagrams dropped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dropped {
    pub malformed: u64,
    pub oversized: u64,
    pub fragment: u64,
    pub protocol: u64,
    pub ipv6_off: u64,
    /// Packets from the app while the stack was full (callback input only: a TUN fd is
    /// simply read more slowly, and the kernel queues or drops).
    pub input_full: u64,
    /// Packets to the app while its packet callback had not taken the previous ones.
    pub output_full: u64,
    /// UDP datagrams not carried: a flow's queue was full, the session refused them, or a
    /// reply no packet can carry (a name for a source, the other IP family).
    pub udp: u64,
}

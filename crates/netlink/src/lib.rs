//! A small route-netlink client over netlink-packet-route's messages: the
//! requests both sides of pod networking make. The host (the sandbox's
//! `podnet`) reads the pod's interface and ties a tap to it with tc; the
//! guest agent gives its eth0 that interface's MAC, MTU, addresses and
//! routes.
//!
//! A [`Netlink`] socket belongs to the network namespace of the thread
//! that opened it. libcontainer's netlink client is not used: it has
//! neither routes nor traffic control, and the agent does not link it.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
pub use netlink_packet_route;

/// The main routing table.
pub const MAIN_TABLE: u8 = 254;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// A unicast route of the main table through one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None: the default route of the gateway's family.
    pub destination: Option<Address>,
    pub gateway: Option<IpAddr>,
}

/// A route netlink socket of the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    pub fn new() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends `msg` with `flags`, and returns what the kernel answered: the
    /// messages of a dump, or nothing for an acknowledged change. A kernel
    /// error is an `io::Error` of its errno.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.sequence;
        nl.finalize();
        let mut buf = vec![0u8; nl.header.length as usize];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        // Both bits: NLM_F_EXCL, of a change, is one of them.
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::other(format!("malformed netlink answer: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.sequence {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                        // The acknowledgement of a change.
                        None if !dump => return Ok(out),
                        None => {}
                    },
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a change and waits for its acknowledgement.
    pub fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(drop)
    }

    pub fn links(&mut self) -> io::Result<Vec<LinkMessage>> {
        Ok(self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    pub fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self
            .links()?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| l.header.index))
    }

    /// Sets link `index` up or down, and its MTU, MAC and name where given.
    pub fn set_link(&mut self, index: u32, change: &LinkChange) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = change.up {
            m.header.flags = if up {
                LinkFlags::Up
            } else {
                LinkFlags::empty()
            };
            m.header.change_mask = LinkFlags::Up;
        }
        if let Some(mtu) = change.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = change.mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(name) = &change.name {
            m.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(m), 0)
    }

    /// The addresses of link `index` of global scope (the kernel's own
    /// link-local ones left out).
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Address>> {
        Ok(self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.index == index && a.header.scope == AddressScope::Universe =>
                {
                    let ip = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    Some(Address {
                        ip,
                        prefix_len: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, a: &Address) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(&a.ip);
        m.header.prefix_len = a.prefix_len;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(a.ip));
        m.attributes.push(AddressAttribute::Address(a.ip));
        if let IpAddr::V4(v4) = a.ip {
            // The broadcast address `ip` adds with `brd +`.
            let host_bits = 32 - u32::from(a.prefix_len.min(32));
            let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            let brd = u32::from(v4) | !mask;
            if a.prefix_len < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(std::net::Ipv4Addr::from(brd)));
            }
        }
        m
    }

    pub fn add_address(&mut self, index: u32, a: &Address) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewAddress(Self::address_message(index, a)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete_address(&mut self, index: u32, a: &Address) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::DelAddress(Self::address_message(index, a)),
            0,
        )
    }

    /// The unicast routes of the main table through link `index`, but
    /// those the kernel adds for an address.
    pub fn routes(&mut self, index: u32) -> io::Result<Vec<Route>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            for m in self.request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                let through = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                if !through
                    || r.header.table != MAIN_TABLE
                    || r.header.kind != RouteType::Unicast
                    || r.header.protocol == RouteProtocol::Kernel
                {
                    continue;
                }
                let mut route = Route {
                    destination: None,
                    gateway: None,
                };
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => {
                            route.destination = ip_of(d).map(|ip| Address {
                                ip,
                                prefix_len: r.header.destination_prefix_length,
                            })
                        }
                        RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
                        _ => {}
                    }
                }
                routes.push(route);
            }
        }
        Ok(routes)
    }

    fn route_message(index: u32, r: &Route) -> io::Result<RouteMessage> {
        let ip = r
            .destination
            .map(|d| d.ip)
            .or(r.gateway)
            .ok_or_else(|| io::Error::other("a default route needs a gateway"))?;
        let mut m = RouteMessage::default();
        m.header.address_family = family(&ip);
        m.header.table = MAIN_TABLE;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some(d) = r.destination {
            m.header.destination_prefix_length = d.prefix_len;
            m.attributes
                .push(RouteAttribute::Destination(route_address(d.ip)));
        }
        if let Some(g) = r.gateway {
            if family(&g) != m.header.address_family {
                return Err(io::Error::other(format!(
                    "the route's gateway {g} is not of its destination's family"
                )));
            }
            m.attributes.push(RouteAttribute::Gateway(route_address(g)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        Ok(m)
    }

    pub fn add_route(&mut self, index: u32, r: &Route) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewRoute(Self::route_message(index, r)?),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete_route(&mut self, index: u32, r: &Route) -> io::Result<()> {
        let mut m = Self::route_message(index, r)?;
        // Whoever added it.
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        self.change(RouteNetlinkMessage::DelRoute(m), 0)
    }
}

/// What [`Netlink::set_link`] changes (None: left as it is).
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub name: Option<String>,
}

pub fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link's Ethernet address.
pub fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
        _ => None,
    })
}

pub fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_v4_address_gets_its_broadcast() {
        let m = Netlink::address_message(
            3,
            &Address {
                ip: IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5)),
                prefix_len: 16,
            },
        );
        assert!(m
            .attributes
            .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(
                10, 88, 255, 255
            ))));
        let p32 = Netlink::address_message(
            3,
            &Address {
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                prefix_len: 32,
            },
        );
        assert!(!p32
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
    }

    #[test]
    fn routes_check_their_families() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let default = Route {
            destination: None,
            gateway: Some(v4),
        };
        let m = Netlink::route_message(2, &default).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(Netlink::route_message(
            2,
            &Route {
                destination: None,
                gateway: None
            }
        )
        .is_err());
        assert!(Netlink::route_message(
            2,
            &Route {
                destination: Some(Address {
                    ip: v6,
                    prefix_len: 64
                }),
                gateway: Some(v4)
            }
        )
        .is_err());
    }

    #[test]
    fn macs_format() {
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]),
            "02:00:ab:01:02:ff"
        );
    }
}

//! The guest's network, as the host's pod network says: the NIC the
//! hypervisor gave the pod's MAC takes the pod interface's name, MTU and
//! addresses ([`update_interface`]), and the guest's routes become the
//! pod's ([`update_routes`]). Containers that share the guest's network
//! namespace then sit where CNI put the pod.
//!
//! Every field comes from the host and is checked here before any netlink
//! request is made from it ([`Interface::parse`], [`parse_routes`]).

use std::collections::HashMap;
use std::net::IpAddr;

use ironcell_netlink::netlink_packet_route::link::{LinkFlags, LinkMessage};
use ironcell_netlink::{format_mac, link_mac, link_name, Address, LinkChange, Netlink, Route};
use ironcell_protocol::agent;

use crate::AgentError;

/// The most addresses of an interface, and routes, one request carries.
const MAX_ADDRESSES: usize = 64;
const MAX_ROUTES: usize = 256;

fn invalid(what: impl Into<String>) -> AgentError {
    AgentError::Invalid(what.into())
}

fn netlink(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    AgentError::io(what)
}

/// A checked `agent::Interface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<Address>,
}

fn check_link_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "interface name {:?} is not a Linux interface name (1..15 printable bytes, no '/' or ':')",
            name.chars().take(40).collect::<String>()
        )))
    }
}

fn parse_address(text: &str, prefix_len: u32, what: &str) -> Result<Address, AgentError> {
    let ip: IpAddr = text.parse().map_err(|_| {
        invalid(format!(
            "{what} {:?} is not an IP address",
            text.chars().take(50).collect::<String>()
        ))
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(invalid(format!(
            "{what} {ip}/{prefix_len}: the prefix is longer than {max}"
        )));
    }
    Ok(Address {
        ip,
        prefix_len: prefix_len as u8,
    })
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, AgentError> {
    text.parse().map_err(|_| {
        invalid(format!(
            "{what} {:?} is not an IP address",
            text.chars().take(50).collect::<String>()
        ))
    })
}

impl Interface {
    pub fn parse(req: &agent::Interface) -> Result<Interface, AgentError> {
        check_link_name(&req.name)?;
        let mac: [u8; 6] = req.mac.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "interface {}: a MAC is 6 bytes, not {}",
                req.name,
                req.mac.len()
            ))
        })?;
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return Err(invalid(format!(
                "interface {}: {} is not a unicast MAC",
                req.name,
                format_mac(&mac)
            )));
        }
        if !(68..=65535).contains(&req.mtu) {
            return Err(invalid(format!(
                "interface {}: MTU {} is outside 68..65535",
                req.name, req.mtu
            )));
        }
        if req.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "interface {}: {} addresses, at most {MAX_ADDRESSES}",
                req.name,
                req.addresses.len()
            )));
        }
        let mut addresses = Vec::new();
        for a in &req.addresses {
            let addr = parse_address(&a.address, a.prefix_len, "address")?;
            if addr.ip.is_loopback() || addr.ip.is_multicast() || addr.ip.is_unspecified() {
                return Err(invalid(format!(
                    "address {} cannot be an interface's",
                    addr.ip
                )));
            }
            if !addresses.contains(&addr) {
                addresses.push(addr);
            }
        }
        Ok(Interface {
            name: req.name.clone(),
            mac,
            mtu: req.mtu,
            addresses,
        })
    }
}

/// Checked routes, each with the name of its device.
pub fn parse_routes(req: &[agent::Route]) -> Result<Vec<(String, Route)>, AgentError> {
    if req.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "{} routes, at most {MAX_ROUTES}",
            req.len()
        )));
    }
    let mut out = Vec::new();
    for r in req {
        check_link_name(&r.device)?;
        let destination = match r.destination.as_str() {
            "" => None,
            d => Some(parse_address(
                d,
                r.destination_prefix_len,
                "route destination",
            )?),
        };
        let gateway = match r.gateway.as_str() {
            "" => None,
            g => Some(parse_ip(g, "route gateway")?),
        };
        let family_of = |ip: &IpAddr| ip.is_ipv4();
        match (destination, gateway) {
            (None, None) => {
                return Err(invalid(format!(
                    "a default route through {} needs a gateway",
                    r.device
                )))
            }
            (Some(d), Some(g)) if family_of(&d.ip) != family_of(&g) => {
                return Err(invalid(format!(
                    "route to {}/{} via {g}: the gateway is of another family",
                    d.ip, d.prefix_len
                )))
            }
            _ => {}
        }
        let route = Route {
            destination,
            gateway,
        };
        if !out.contains(&(r.device.clone(), route.clone())) {
            out.push((r.device.clone(), route));
        }
    }
    Ok(out)
}

fn open() -> Result<Netlink, AgentError> {
    Netlink::new().map_err(netlink("netlink socket"))
}

/// The links of the namespace but loopback, by name.
fn links(nl: &mut Netlink) -> Result<Vec<LinkMessage>, AgentError> {
    Ok(nl
        .links()
        .map_err(netlink("listing links"))?
        .into_iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .collect())
}

/// Gives the link with `iface.mac` its name, MTU and exactly its
/// addresses, and sets it up.
pub fn update_interface(iface: &Interface) -> Result<(), AgentError> {
    let mut nl = open()?;
    let links = links(&mut nl)?;
    let link = links
        .iter()
        .find(|l| link_mac(l) == Some(iface.mac))
        .ok_or_else(|| {
            AgentError::Invalid(format!(
                "no guest interface has MAC {} (the VM's NIC must be given the pod's MAC)",
                format_mac(&iface.mac)
            ))
        })?;
    let index = link.header.index;
    let current = link_name(link).unwrap_or_default().to_string();
    if current != iface.name {
        if links.iter().any(|l| link_name(l) == Some(&iface.name)) {
            return Err(invalid(format!(
                "cannot rename {current} to {}: another guest interface has that name",
                iface.name
            )));
        }
        // A link is renamed only while it is down.
        nl.set_link(
            index,
            &LinkChange {
                up: Some(false),
                ..LinkChange::default()
            },
        )
        .map_err(netlink(format!("setting {current} down")))?;
        nl.set_link(
            index,
            &LinkChange {
                name: Some(iface.name.clone()),
                ..LinkChange::default()
            },
        )
        .map_err(netlink(format!("renaming {current} to {}", iface.name)))?;
    }
    nl.set_link(
        index,
        &LinkChange {
            mtu: Some(iface.mtu),
            ..LinkChange::default()
        },
    )
    .map_err(netlink(format!(
        "setting {}'s MTU to {}",
        iface.name, iface.mtu
    )))?;
    let had = nl
        .addresses(index)
        .map_err(netlink(format!("listing {}'s addresses", iface.name)))?;
    for a in had.iter().filter(|a| !iface.addresses.contains(a)) {
        nl.delete_address(index, a)
            .map_err(netlink(format!("removing {}/{}", a.ip, a.prefix_len)))?;
    }
    for a in iface.addresses.iter().filter(|a| !had.contains(a)) {
        nl.add_address(index, a).map_err(netlink(format!(
            "adding {}/{} to {}",
            a.ip, a.prefix_len, iface.name
        )))?;
    }
    nl.set_link(
        index,
        &LinkChange {
            up: Some(true),
            ..LinkChange::default()
        },
    )
    .map_err(netlink(format!("setting {} up", iface.name)))
}

/// Makes `routes` the routes of the guest's links (those the kernel adds
/// for addresses aside): routes not listed are removed, the missing ones
/// added, on-link routes before those through a gateway.
pub fn update_routes(routes: &[(String, Route)]) -> Result<(), AgentError> {
    let mut nl = open()?;
    let index: HashMap<String, u32> = links(&mut nl)?
        .iter()
        .filter_map(|l| Some((link_name(l)?.to_string(), l.header.index)))
        .collect();
    let mut wanted: Vec<(u32, &String, &Route)> = Vec::new();
    for (device, route) in routes {
        let i = *index
            .get(device)
            .ok_or_else(|| invalid(format!("route through {device}: no such guest interface")))?;
        wanted.push((i, device, route));
    }
    for (name, &i) in &index {
        let had = nl
            .routes(i)
            .map_err(netlink(format!("listing {name}'s routes")))?;
        for r in had {
            if !wanted.iter().any(|(wi, _, wr)| *wi == i && **wr == r) {
                nl.delete_route(i, &r)
                    .map_err(netlink(format!("removing a route of {name}")))?;
            }
        }
    }
    wanted.sort_by_key(|(_, _, r)| r.gateway.is_some());
    for (i, device, r) in wanted {
        match nl.add_route(i, r) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            other => other.map_err(netlink(format!(
                "adding route {} through {device}",
                describe(r)
            )))?,
        }
    }
    Ok(())
}

fn describe(r: &Route) -> String {
    let to = r.destination.map_or("default".to_string(), |d| {
        format!("{}/{}", d.ip, d.prefix_len)
    });
    match r.gateway {
        Some(g) => format!("{to} via {g}"),
        None => to,
    }
}

/// The `net.*` sysctls of a container that shares the guest's network
/// namespace (its spec has no network namespace): in a guest, that
/// namespace is the pod's own, where a pod's network sysctls belong (CRI
/// sets `net.ipv4.ping_group_range` on every pod). The engine refuses them
/// there, since on a host the namespace would be the host's; the agent
/// that is the guest's PID 1 sets them itself, in its own namespace, and
/// takes them out of the spec.
pub fn take_pod_sysctls(spec: &mut oci_spec::runtime::Spec) -> Result<(), AgentError> {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(());
    };
    let own_network = linux
        .namespaces()
        .as_ref()
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    let Some(mut sysctls) = linux.sysctl().clone() else {
        return Ok(());
    };
    if own_network {
        return Ok(());
    }
    let net: Vec<String> = sysctls
        .keys()
        .filter(|k| k.replace('/', ".").starts_with("net."))
        .cloned()
        .collect();
    for key in net {
        let value = sysctls.remove(&key).unwrap_or_default();
        let path = sysctl_path(&key)?;
        std::fs::write(&path, value.as_bytes()).map_err(AgentError::io(format!("sysctl {key}")))?;
    }
    linux.set_sysctl(Some(sysctls));
    spec.set_linux(Some(linux));
    Ok(())
}

/// `/proc/sys/<key>` of a checked sysctl name (dots or slashes between
/// words of letters, digits, `_` and `-`).
fn sysctl_path(key: &str) -> Result<std::path::PathBuf, AgentError> {
    let words: Vec<&str> = key.split(['.', '/']).collect();
    let ok = words.iter().all(|w| {
        !w.is_empty()
            && w.len() <= 64
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if !ok || words.len() > 8 {
        return Err(invalid(format!("invalid sysctl name {key:?}")));
    }
    Ok(std::path::Path::new("/proc/sys").join(words.join("/")))
}

#[cfg(test)]
mod tests {

    #[test]
    fn sysctl_names_are_checked() {
        assert_eq!(
            sysctl_path("net.ipv4.ping_group_range").unwrap(),
            std::path::Path::new("/proc/sys/net/ipv4/ping_group_range")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0/forwarding").unwrap(),
            std::path::Path::new("/proc/sys/net/ipv4/conf/eth0/forwarding")
        );
        for bad in ["net..x", "net.ipv4/../../x", "net.a b", "", "net."] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_container_with_its_own_network_keeps_its_sysctls() {
        let mut spec: oci_spec::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}],
            "sysctl":{"net.ipv4.ping_group_range":"0 1"}}}"#,
        )
        .unwrap();
        let before = spec.clone();
        take_pod_sysctls(&mut spec).unwrap();
        assert_eq!(spec, before);
    }
    use super::*;

    fn iface(name: &str, mac: &[u8], mtu: u32, addrs: &[(&str, u32)]) -> agent::Interface {
        agent::Interface {
            name: name.into(),
            mac: mac.to_vec(),
            mtu,
            addresses: addrs
                .iter()
                .map(|(a, p)| agent::IpAddress {
                    address: a.to_string(),
                    prefix_len: *p,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 7];

    #[test]
    fn a_good_interface_parses() {
        let i = Interface::parse(&iface(
            "eth0",
            &MAC,
            1400,
            &[("10.88.0.5", 16), ("fd00::5", 64), ("10.88.0.5", 16)],
        ))
        .unwrap();
        assert_eq!(i.addresses.len(), 2, "duplicates are one");
        assert_eq!(i.mtu, 1400);
    }

    #[test]
    fn hostile_interfaces_are_refused_with_what_is_wrong() {
        let cases: &[(agent::Interface, &str)] = &[
            (iface("", &MAC, 1500, &[]), "interface name"),
            (iface("a/b", &MAC, 1500, &[]), "interface name"),
            (iface("sixteen-bytes-xx", &MAC, 1500, &[]), "interface name"),
            (iface("eth0", &MAC[..5], 1500, &[]), "6 bytes"),
            (iface("eth0", &[1, 0, 0, 0, 0, 1], 1500, &[]), "unicast"),
            (iface("eth0", &[0; 6], 1500, &[]), "unicast"),
            (iface("eth0", &MAC, 67, &[]), "MTU"),
            (iface("eth0", &MAC, 70000, &[]), "MTU"),
            (iface("eth0", &MAC, 1500, &[("10.0.0.300", 8)]), "not an IP"),
            (
                iface("eth0", &MAC, 1500, &[("10.0.0.3", 33)]),
                "longer than 32",
            ),
            (iface("eth0", &MAC, 1500, &[("127.0.0.2", 8)]), "cannot be"),
            (iface("eth0", &MAC, 1500, &[("224.0.0.1", 8)]), "cannot be"),
        ];
        for (req, want) in cases {
            let e = Interface::parse(req).unwrap_err().to_string();
            assert!(e.contains(want), "{req:?}: {e}");
            assert!(!e.contains('\n'));
        }
        let many: Vec<(String, u32)> = (0..65).map(|i| (format!("10.0.1.{i}"), 24)).collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        let e = Interface::parse(&iface("eth0", &MAC, 1500, &many))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }

    fn route(dest: &str, len: u32, gw: &str, dev: &str) -> agent::Route {
        agent::Route {
            destination: dest.into(),
            destination_prefix_len: len,
            gateway: gw.into(),
            device: dev.into(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_parse_and_bad_ones_are_refused() {
        let ok = parse_routes(&[
            route("", 0, "10.88.0.1", "eth0"),
            route("10.1.0.0", 16, "", "eth0"),
            route("", 0, "10.88.0.1", "eth0"),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (r, want) in [
            (route("", 0, "", "eth0"), "needs a gateway"),
            (route("10.0.0.0", 8, "fd00::1", "eth0"), "another family"),
            (route("10.0.0.0", 40, "", "eth0"), "longer than 32"),
            (route("", 0, "gw", "eth0"), "not an IP"),
            (route("", 0, "10.0.0.1", ""), "interface name"),
        ] {
            let e = parse_routes(&[r]).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let many = vec![route("", 0, "10.0.0.1", "eth0"); 257];
        assert!(parse_routes(&many)
            .unwrap_err()
            .to_string()
            .contains("at most 256"));
    }
}

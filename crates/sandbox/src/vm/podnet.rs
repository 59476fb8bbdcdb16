//! A VM joined to a pod's network namespace the way Kata joins its VMs: a
//! tap device in the namespace for the hypervisor, and the pod's CNI
//! interface and the tap tied together by tc: an ingress qdisc on each and
//! a filter that matches every frame arriving on one and redirects it to
//! the other's egress (`u32 match u8 0 0 action mirred egress redirect`;
//! u32 rather than matchall, which kernels such as this project's CI
//! host's are built without). The guest's eth0 then takes the CNI interface's
//! MAC, addresses and routes ([`PodInterface`], for the agent), so the
//! network CNI set up sees the guest where it put the pod.
//!
//! Every step runs on a thread of its own that joined the namespace:
//! `setns` changes the calling thread only, and a netlink socket and a tap
//! belong to the namespace of the thread that made them. The netlink
//! messages are netlink-packet-route's (libcontainer's client has no
//! traffic-control messages).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{Result, SandboxError};

fn net_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(format!("pod network: {what}"))
}

/// The main routing table.
const MAIN_TABLE: u8 = 254;
/// The ingress qdisc's handle (`ffff:`).
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// ETH_P_ALL, in network byte order, in the low half of a filter's info;
/// priority 1 in the high half.
const FILTER_INFO: u32 = (1 << 16) | (libc::ETH_P_ALL as u16).to_be() as u32;

/// A route of the pod's interface, for the guest's eth0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// None: the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
}

/// The interface CNI gave the pod, as the guest's eth0 must copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Addresses with their prefix length (link-local IPv6 left out: the
    /// guest makes its own).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through it, but those the kernel adds for an address.
    pub routes: Vec<PodRoute>,
}

/// Runs `f` on a thread that joined the network namespace at `netns`.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = File::open(netns).map_err(|e| {
        net_err(format!(
            "cannot open the namespace {}: {e}",
            netns.display()
        ))
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace fd this thread owns a reference
            // to; CLONE_NEWNET changes only this thread's network namespace,
            // and the thread ends when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(net_err(format!(
                    "cannot join {}: {}",
                    netns.display(),
                    io::Error::last_os_error()
                )));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(net_err("the namespace's thread panicked")))
    })
}

/// A route netlink socket of the calling thread's namespace.
struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    fn new() -> Result<Netlink> {
        let open = || -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        Ok(Netlink {
            socket: open().map_err(|e| net_err(format!("netlink: {e}")))?,
            sequence: 0,
        })
    }

    /// Sends `msg` with `flags`, and returns what the kernel answered: the
    /// messages of a dump, or nothing for an acknowledged change. A kernel
    /// error is an `io::Error` of its errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence += 1;
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

    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(drop)
    }

    fn links(&mut self) -> io::Result<Vec<LinkMessage>> {
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

    fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self
            .links()?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| l.header.index))
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The pod's interface: the one link besides loopback (and `tap`).
fn pod_interface(nl: &mut Netlink, tap: &str) -> Result<PodInterface> {
    let links = nl
        .links()
        .map_err(|e| net_err(format!("listing links: {e}")))?;
    let candidates: Vec<&LinkMessage> = links
        .iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .filter(|l| link_name(l).is_some_and(|n| n != tap))
        .collect();
    let link = match candidates.as_slice() {
        [one] => *one,
        [] => return Err(net_err(
            "the namespace has no interface but loopback (no CNI network, or a host-network pod)",
        )),
        many => *many
            .iter()
            .find(|l| link_name(l) == Some("eth0"))
            .ok_or_else(|| {
                let names: Vec<&str> = many.iter().filter_map(|l| link_name(l)).collect();
                net_err(format!(
                    "the namespace has several interfaces and no eth0: {names:?}"
                ))
            })?,
    };
    let name = link_name(link).unwrap_or_default().to_string();
    let index = link.header.index;
    let mut mac = None;
    let mut mtu = 1500;
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => {
                mac = Some([m[0], m[1], m[2], m[3], m[4], m[5]])
            }
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| net_err(format!("{name} has no Ethernet address")))?;
    let addresses = nl
        .request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )
        .map_err(|e| net_err(format!("listing addresses: {e}")))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.header.index == index && a.header.scope == AddressScope::Universe =>
            {
                let ip = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((ip, a.header.prefix_len))
            }
            _ => None,
        })
        .collect();
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let found = nl
            .request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP)
            .map_err(|e| net_err(format!("listing routes: {e}")))?;
        for m in found {
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
            let mut route = PodRoute {
                destination: None,
                gateway: None,
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => {
                        route.destination =
                            ip_of(d).map(|ip| (ip, r.header.destination_prefix_length))
                    }
                    RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
                    _ => {}
                }
            }
            routes.push(route);
        }
    }
    Ok(PodInterface {
        name,
        index,
        mac,
        mtu,
        addresses,
        routes,
    })
}

/// struct ifreq for TUNSETIFF: a name and flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// Makes a persistent tap `name` in this thread's namespace (it outlives
/// the fd; the hypervisor opens it by name).
fn make_tap(name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0', ' ']) {
        return Err(net_err(format!("bad tap name {name:?}")));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| net_err(format!("cannot open /dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` lays
    // out (name, flags, padding to its full size); TUNSETPERSIST takes an
    // integer. Both act on the tun fd this function owns.
    let ok = unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) == 0
            && libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST as _, 1) == 0
    };
    if !ok {
        return Err(net_err(format!(
            "cannot make tap {name}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// A filter on `from`'s ingress redirecting every frame to `to`'s egress.
fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_HANDLE;
    m.header.info = FILTER_INFO;
    // The types are non-exhaustive: built from their defaults.
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut parms = TcMirror::default();
    parms.generic = generic;
    parms.eaction = TcMirrorActionType::EgressRedir;
    parms.ifindex = to;
    let mut mirred = TcAction::default();
    mirred.tab = 1;
    mirred.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            parms,
        ))]),
    ];
    // One key that matches anything: mask 0 at offset 0.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![mirred])),
    ]));
    m
}

/// Sets link `index` up with MTU `mtu`.
fn link_up(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    nl.change(RouteNetlinkMessage::SetLink(m), 0)
}

/// Makes tap `tap` in the namespace at `netns` and ties it to the pod's
/// interface; returns that interface as the guest must copy it. On error
/// nothing of it is left.
pub fn connect(netns: &Path, tap: &str) -> Result<PodInterface> {
    in_netns(netns, || {
        let mut nl = Netlink::new()?;
        let pod = pod_interface(&mut nl, tap)?;
        make_tap(tap)?;
        // Undone on error: the tap (its qdisc and filter go with it), and
        // the pod interface's qdisc once this call made it.
        let mut made_qdisc = false;
        let tied = (|| -> io::Result<()> {
            let tap_index = nl
                .index_of(tap)?
                .ok_or_else(|| io::Error::other("the tap vanished"))?;
            link_up(&mut nl, tap_index, pod.mtu)?;
            for index in [tap_index, pod.index] {
                // EEXIST on the pod's interface: it is tied already.
                nl.change(
                    RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )?;
            }
            made_qdisc = true;
            for (from, to) in [(pod.index, tap_index), (tap_index, pod.index)] {
                nl.change(
                    RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )?;
            }
            Ok(())
        })();
        if let Err(e) = tied {
            delete_link(&mut nl, tap);
            if made_qdisc {
                delete_ingress(&mut nl, &pod.name);
            }
            return Err(net_err(format!("tying {tap} to {}: {e}", pod.name)));
        }
        Ok(pod)
    })
}

/// Removes tap `tap` (its qdisc and filter go with it) and the ingress
/// qdisc (with its filter) of `interface`; what is already gone is no
/// error.
pub fn disconnect(netns: &Path, tap: &str, interface: &str) -> Result<()> {
    in_netns(netns, || {
        let mut nl = Netlink::new()?;
        untie(&mut nl, tap, interface);
        Ok(())
    })
}

fn untie(nl: &mut Netlink, tap: &str, interface: &str) {
    delete_link(nl, tap);
    delete_ingress(nl, interface);
}

fn delete_link(nl: &mut Netlink, name: &str) {
    if let Ok(Some(index)) = nl.index_of(name) {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let _ = nl.change(RouteNetlinkMessage::DelLink(m), 0);
    }
}

/// Removes `interface`'s ingress qdisc and with it its filters.
fn delete_ingress(nl: &mut Netlink, interface: &str) {
    if let Ok(Some(index)) = nl.index_of(interface) {
        let _ = nl.change(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        );
    }
}

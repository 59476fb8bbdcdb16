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
use std::os::fd::AsRawFd;
use std::path::Path;

use ironcell_netlink::netlink_packet_route::link::{LinkFlags, LinkMessage};
use ironcell_netlink::netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use ironcell_netlink::netlink_packet_route::RouteNetlinkMessage;
use ironcell_netlink::{
    link_mac, link_mtu, link_name, Address, LinkChange, Netlink, Route, NLM_F_CREATE, NLM_F_EXCL,
};

use crate::{Result, SandboxError};

fn net_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Vm(format!("pod network: {what}"))
}

/// The ingress qdisc's handle (`ffff:`).
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// ETH_P_ALL, in network byte order, in the low half of a filter's info;
/// priority 1 in the high half.
const FILTER_INFO: u32 = (1 << 16) | (libc::ETH_P_ALL as u16).to_be() as u32;

/// The interface CNI gave the pod, as the guest's eth0 must copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Addresses of global scope (link-local IPv6 left out: the guest
    /// makes its own).
    pub addresses: Vec<Address>,
    /// Routes through it, but those the kernel adds for an address.
    pub routes: Vec<Route>,
}

/// Runs `f` on a thread that joined the network namespace at `netns`.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = File::open(netns).map_err(|e| {
        net_err(format!(
            "cannot open the namespace {}: {e}",
            netns.display()
        ))
    })?;
    on_net_thread(
        || {
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
            Ok(())
        },
        f,
    )
}

/// Runs `f` on a thread of its own, once `enter` has moved that thread to
/// another network namespace.
fn on_net_thread<T: Send>(
    enter: impl FnOnce() -> Result<()> + Send,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter()?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(net_err("the namespace's thread panicked")))
    })
}

/// The pod's interface: the one link besides loopback (and `tap`); None
/// when there is none.
fn pod_interface(nl: &mut Netlink, tap: &str) -> Result<Option<PodInterface>> {
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
        [] => return Ok(None),
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
    let mac = link_mac(link).ok_or_else(|| net_err(format!("{name} has no Ethernet address")))?;
    let addresses = nl
        .addresses(index)
        .map_err(|e| net_err(format!("listing addresses: {e}")))?;
    let routes = nl
        .routes(index)
        .map_err(|e| net_err(format!("listing routes: {e}")))?;
    Ok(Some(PodInterface {
        name,
        index,
        mac,
        mtu: link_mtu(link).unwrap_or(1500),
        addresses,
        routes,
    }))
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

/// Makes tap `name` in this thread's namespace and returns its fd;
/// `persist`: the tap outlives the fd (the hypervisor opens it by name).
fn open_tap(name: &str, persist: bool) -> Result<File> {
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
            && (!persist || libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST as _, 1) == 0)
    };
    if !ok {
        return Err(net_err(format!(
            "cannot make tap {name}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(tun)
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

/// The step of [`tie`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TieStep {
    /// Adding an ingress qdisc (the first, `a`'s, or the second, `b`'s).
    Qdisc,
    /// Adding a filter, once both qdiscs were made.
    Filter,
}

/// Ties links `a` and `b` both ways: an ingress qdisc on each (`a`'s
/// first), then on each a filter redirecting every frame to the other's
/// egress.
fn tie(nl: &mut Netlink, a: u32, b: u32) -> std::result::Result<(), (TieStep, io::Error)> {
    for index in [a, b] {
        nl.change(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| (TieStep::Qdisc, e))?;
    }
    for (from, to) in [(b, a), (a, b)] {
        nl.change(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| (TieStep::Filter, e))?;
    }
    Ok(())
}

/// Makes tap `tap` in the namespace at `netns` and ties it to the pod's
/// interface; returns that interface as the guest must copy it, or None,
/// having done nothing, when the namespace has only loopback (no CNI
/// network was set up there). On error nothing of it is left.
pub fn connect(netns: &Path, tap: &str) -> Result<Option<PodInterface>> {
    in_netns(netns, || {
        let mut nl = Netlink::new().map_err(|e| net_err(format!("netlink: {e}")))?;
        // Opening an existing tap would take another VM's.
        if nl.index_of(tap).ok().flatten().is_some() {
            return Err(net_err(format!(
                "the namespace has a tap {tap} already: another VM is joined to this pod network"
            )));
        }
        let Some(pod) = pod_interface(&mut nl, tap)? else {
            return Ok(None);
        };
        open_tap(tap, true)?;
        // Undone on error: the tap (its qdisc and filter go with it), and
        // the pod interface's qdisc once this call made it.
        let mut made_qdisc = false;
        let tied = (|| -> io::Result<()> {
            let tap_index = nl
                .index_of(tap)?
                .ok_or_else(|| io::Error::other("the tap vanished"))?;
            nl.set_link(
                tap_index,
                &LinkChange {
                    up: Some(true),
                    mtu: Some(pod.mtu),
                    ..LinkChange::default()
                },
            )?;
            // EEXIST on the pod's interface's qdisc: it is tied already.
            tie(&mut nl, tap_index, pod.index).map_err(|(step, e)| {
                made_qdisc = step == TieStep::Filter;
                e
            })?;
            Ok(())
        })();
        if let Err(e) = tied {
            delete_link(&mut nl, tap);
            if made_qdisc {
                delete_ingress(&mut nl, &pod.name);
            }
            return Err(net_err(format!("tying {tap} to {}: {e}", pod.name)));
        }
        Ok(Some(pod))
    })
}

/// Whether this host can tie taps to pod interfaces: two taps tied to each
/// other as [`connect`] ties a tap and a pod's interface, in a network
/// namespace of a thread's own that vanishes with them. An error names what
/// the kernel lacks (the ingress qdisc, the u32 filter, the mirred action
/// or /dev/net/tun) or that the caller is not root.
pub fn probe() -> Result<()> {
    on_net_thread(
        || {
            // SAFETY: unshare(CLONE_NEWNET) changes this thread's network
            // namespace only; the thread ends with the probe.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(net_err(format!(
                    "cannot make a network namespace: {}",
                    io::Error::last_os_error()
                )));
            }
            Ok(())
        },
        || {
            let mut nl = Netlink::new().map_err(|e| net_err(format!("netlink: {e}")))?;
            // Not persistent: the taps go with these fds (and with the
            // namespace).
            let _taps = [open_tap("probe0", false)?, open_tap("probe1", false)?];
            let index = |nl: &mut Netlink, name: &str| {
                nl.index_of(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| net_err(format!("tap {name} vanished")))
            };
            let (a, b) = (index(&mut nl, "probe0")?, index(&mut nl, "probe1")?);
            tie(&mut nl, a, b).map_err(|(step, e)| match step {
                TieStep::Qdisc => net_err(format!("the ingress qdisc (sch_ingress): {e}")),
                TieStep::Filter => net_err(format!(
                    "a u32 filter with a mirred redirect (cls_u32, act_mirred): {e}"
                )),
            })?;
            Ok(())
        },
    )
}

/// Removes tap `tap` (its qdisc and filter go with it) and the ingress
/// qdisc (with its filter) of the pod interface it was tied to. A
/// namespace without the tap is left alone: what is already gone is no
/// error, and an interface this VM did not tie is not touched.
pub fn disconnect(netns: &Path, tap: &str) -> Result<()> {
    in_netns(netns, || {
        let mut nl = Netlink::new().map_err(|e| net_err(format!("netlink: {e}")))?;
        if nl.index_of(tap).ok().flatten().is_none() {
            return Ok(());
        }
        if let Ok(Some(pod)) = pod_interface(&mut nl, tap) {
            delete_ingress(&mut nl, &pod.name);
        }
        delete_link(&mut nl, tap);
        Ok(())
    })
}

fn delete_link(nl: &mut Netlink, name: &str) {
    if let Ok(Some(index)) = nl.index_of(name) {
        let _ = nl.delete_link(index);
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

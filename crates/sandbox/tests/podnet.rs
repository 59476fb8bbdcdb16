//! A tap tied to a pod's CNI interface, in real network namespaces: the
//! pod's side is a veth whose peer sits in a second namespace, as CNI's
//! bridge plugin leaves it. Frames cross both ways between the tap (where
//! the hypervisor would be) and the peer; afterwards nothing is left.
//! Needs root (namespaces, taps, tc); skipped loudly otherwise.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use ironcell_netlink::{Address, Route};
use ironcell_sandbox::vm::podnet::{connect, disconnect};
use ironcell_testutil::netns::{in_netns, ip, path, tc, Netns};

/// An experimental EtherType (IEEE 802 local use).
const ETHERTYPE: u16 = 0x88b5;

/// The tap opened as a hypervisor opens it (in its namespace, by name);
/// non-blocking, so that a frame that never comes fails the test.
fn open_tap(name: &str) -> File {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    // IFF_TAP | IFF_NO_PI
    req[16..18].copy_from_slice(&0x1002i16.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes the 40-byte struct ifreq.
    let set = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, req.as_mut_ptr()) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: F_SETFL on an fd this function owns.
    let nonblocking = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    assert_eq!(nonblocking, 0);
    tun
}

/// A packet socket on `ifname` for frames of [`ETHERTYPE`].
fn packet_socket(ifname: &str) -> OwnedFd {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETHERTYPE.to_be()),
        )
    };
    assert!(fd >= 0);
    // SAFETY: fd is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0);
    // SAFETY: sockaddr_ll is plain old data; zeroed is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETHERTYPE.to_be();
    sa.sll_ifindex = index as i32;
    // SAFETY: bind with a sockaddr_ll of its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0);
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO with a timeval of its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    fd
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn mac_of(netns: &str, ifname: &str) -> [u8; 6] {
    let out = ip(&["-n", netns, "-br", "link", "show", ifname]);
    let text = out.split_whitespace().nth(2).unwrap();
    let b: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// Reads frames until one carries `payload`.
fn wait_frame(
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    payload: &[u8],
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "no frame with {payload:?}");
        let Ok(n) = read(&mut buf) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let f = &buf[..n];
        if n >= 14 && f[12..14] == ETHERTYPE.to_be_bytes() && f[14..].starts_with(payload) {
            return f.to_vec();
        }
    }
}

fn need_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n!!! SKIPPED {test}: needs root !!!\n");
        return false;
    }
    true
}

#[test]
fn a_tap_tied_to_the_pod_interface_carries_frames_both_ways_and_goes() {
    if !need_root("a_tap_tied_to_the_pod_interface_carries_frames_both_ways_and_goes") {
        return;
    }
    let id = std::process::id();
    let (pod, peer) = (format!("icpod{id}"), format!("icpeer{id}"));
    let mut ns = Netns::default();
    ns.add(&pod);
    ns.add(&peer);
    ip(&[
        "-n", &pod, "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer", "netns", &peer,
    ]);
    ip(&["-n", &pod, "addr", "add", "10.99.7.2/24", "dev", "eth0"]);
    ip(&["-n", &pod, "link", "set", "eth0", "mtu", "1400", "up"]);
    ip(&["-n", &pod, "route", "add", "default", "via", "10.99.7.1"]);
    ip(&["-n", &peer, "addr", "add", "10.99.7.1/24", "dev", "vpeer"]);
    ip(&["-n", &peer, "link", "set", "vpeer", "up"]);

    let iface = connect(&path(&pod), "tap0").unwrap().unwrap();
    assert_eq!(iface.name, "eth0");
    assert_eq!(iface.mac, mac_of(&pod, "eth0"));
    assert_eq!(iface.mtu, 1400);
    assert_eq!(
        iface.addresses,
        vec![Address {
            ip: IpAddr::V4(Ipv4Addr::new(10, 99, 7, 2)),
            prefix_len: 24
        }]
    );
    assert_eq!(
        iface.routes,
        vec![Route {
            destination: None,
            gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 99, 7, 1))),
        }]
    );
    for dev in ["eth0", "tap0"] {
        let filters = tc(&pod, &["filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains("u32") && filters.contains("mirred"),
            "{dev}: {filters}"
        );
    }
    assert!(ip(&["-n", &pod, "link", "show", "tap0"]).contains("mtu 1400"));
    // A second tie of the same pod is refused, and leaves the first whole.
    assert!(connect(&path(&pod), "tap1").is_err());
    assert!(tc(&pod, &["filter", "show", "dev", "tap0", "ingress"]).contains("mirred"));
    // So is a second VM's tap of the same name, which would be the first's.
    let e = connect(&path(&pod), "tap0").unwrap_err().to_string();
    assert!(e.contains("another VM"), "{e}");
    // Undoing a tap that is not there leaves the pod's interface tied.
    disconnect(&path(&pod), "tap9").unwrap();
    for dev in ["eth0", "tap0"] {
        assert!(tc(&pod, &["filter", "show", "dev", dev, "ingress"]).contains("mirred"));
    }

    let pod_mac = iface.mac;
    let peer_mac = mac_of(&peer, "vpeer");
    let mut tap = in_netns(&pod, || open_tap("tap0"));
    let sock = in_netns(&peer, || packet_socket("vpeer"));
    // Peer to guest: into the pod's eth0, out of the tap.
    let out = frame(pod_mac, peer_mac, b"to-guest");
    // SAFETY: send on a socket this test owns, from a live buffer.
    let sent = unsafe { libc::send(sock.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
    assert_eq!(sent, out.len() as isize);
    let got = wait_frame(|b| tap.read(b), b"to-guest");
    assert_eq!(got[..6], pod_mac);
    // Guest to peer: into the tap, out of the pod's eth0.
    tap.write_all(&frame(peer_mac, pod_mac, b"to-host"))
        .unwrap();
    let got = wait_frame(
        |b| {
            // SAFETY: recv into a live buffer of its length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        },
        b"to-host",
    );
    assert_eq!(got[6..12], pod_mac);
    drop(tap);

    disconnect(&path(&pod), "tap0").unwrap();
    let links = ip(&["-n", &pod, "-br", "link"]);
    assert!(!links.contains("tap0"), "{links}");
    assert_eq!(
        tc(&pod, &["qdisc", "show", "dev", "eth0", "ingress"]).trim(),
        ""
    );
    // Twice is no error.
    disconnect(&path(&pod), "tap0").unwrap();
}

#[test]
fn a_namespace_without_a_pod_interface_is_left_as_it_was() {
    if !need_root("a_namespace_without_a_pod_interface_is_left_as_it_was") {
        return;
    }
    let ns = format!("icnone{}", std::process::id());
    let mut netns = Netns::default();
    netns.add(&ns);
    assert_eq!(connect(&path(&ns), "tap0").unwrap(), None);
    assert!(!ip(&["-n", &ns, "-br", "link"]).contains("tap0"));
    let e = connect(Path::new("/nonexistent/netns"), "tap0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/netns"), "{e}");
}

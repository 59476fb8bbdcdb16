//! The guest's network as the agent sets it ([`ironcell_agent::network`]),
//! in a real network namespace standing in for the guest: a veth end with
//! the pod's MAC and a kernel name plays the VM's NIC. Its name, MTU,
//! addresses and routes become the pod's; a second update replaces them;
//! requests naming what the guest lacks are refused. Needs root
//! (namespaces); skipped loudly otherwise.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use ironcell_agent::network::{parse_routes, update_interface, update_routes, Interface};
use ironcell_protocol::agent;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a thread in namespace `netns`.
fn in_ns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(format!("/run/netns/{netns}")).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns of this thread only, on an fd it holds.
            let joined = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x63, 0x08, 0x02];

fn interface(addrs: &[(&str, u32)]) -> Interface {
    Interface::parse(&agent::Interface {
        name: "eth0".into(),
        mac: MAC.to_vec(),
        mtu: 1400,
        addresses: addrs
            .iter()
            .map(|(a, p)| agent::IpAddress {
                address: a.to_string(),
                prefix_len: *p,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .unwrap()
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
fn the_nic_with_the_pods_mac_becomes_the_pods_interface() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED the_nic_with_the_pods_mac_becomes_the_pods_interface: needs root");
        return;
    }
    let ns = Netns(format!("ic-agent-net-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n",
        &ns.0,
        "link",
        "add",
        "ens3",
        "address",
        "02:42:0a:63:08:02",
        "type",
        "veth",
        "peer",
        "name",
        "gw0",
    ]);
    ip(&["-n", &ns.0, "link", "set", "gw0", "up"]);

    let first = interface(&[("10.99.8.2", 24), ("fd00:99::2", 64)]);
    let routes = parse_routes(&[
        route("", 0, "10.99.8.1", "eth0"),
        route("10.50.0.0", 16, "10.99.8.254", "eth0"),
        route("192.168.77.0", 24, "", "eth0"),
    ])
    .unwrap();
    in_ns(&ns.0, || {
        update_interface(&first).unwrap();
        update_routes(&routes).unwrap();
    });
    let link = ip(&["-n", &ns.0, "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1400") && link.contains(",UP") && link.contains("02:42:0a:63:08:02"),
        "{link}"
    );
    let addrs = ip(&["-n", &ns.0, "addr", "show", "eth0"]);
    assert!(
        addrs.contains("inet 10.99.8.2/24 brd 10.99.8.255") && addrs.contains("fd00:99::2/64"),
        "{addrs}"
    );
    let table = ip(&["-n", &ns.0, "route", "show"]);
    for want in [
        "default via 10.99.8.1 dev eth0",
        "10.50.0.0/16 via 10.99.8.254 dev eth0",
        "192.168.77.0/24 dev eth0",
        // The kernel's own, for the address.
        "10.99.8.0/24 dev eth0 proto kernel",
    ] {
        assert!(table.contains(want), "{want:?} in {table}");
    }

    // Again, with other addresses and fewer routes: the old ones go, and
    // the same request twice is no error.
    let second = interface(&[("10.99.8.3", 24)]);
    let fewer = parse_routes(&[route("", 0, "10.99.8.1", "eth0")]).unwrap();
    in_ns(&ns.0, || {
        for _ in 0..2 {
            update_interface(&second).unwrap();
            update_routes(&fewer).unwrap();
        }
    });
    let addrs = ip(&["-n", &ns.0, "addr", "show", "eth0"]);
    assert!(
        addrs.contains("10.99.8.3/24")
            && !addrs.contains("10.99.8.2/")
            && !addrs.contains("fd00:99::2"),
        "{addrs}"
    );
    let table = ip(&["-n", &ns.0, "route", "show"]);
    assert!(
        table.contains("default via 10.99.8.1 dev eth0")
            && !table.contains("10.50.0.0")
            && !table.contains("192.168.77.0"),
        "{table}"
    );

    // What the guest lacks is named.
    let other = Interface {
        mac: [2, 0, 0, 0, 0, 0x55],
        ..second.clone()
    };
    let clash = Interface {
        name: "gw0".into(),
        ..second.clone()
    };
    let nowhere = parse_routes(&[route("", 0, "10.99.8.1", "eth9")]).unwrap();
    let (e1, e2, e3) = in_ns(&ns.0, || {
        (
            update_interface(&other).unwrap_err().to_string(),
            update_interface(&clash).unwrap_err().to_string(),
            update_routes(&nowhere).unwrap_err().to_string(),
        )
    });
    assert!(
        e1.contains("no guest interface has MAC 02:00:00:00:00:55"),
        "{e1}"
    );
    assert!(e2.contains("another guest interface has that name"), "{e2}");
    assert!(e3.contains("eth9: no such guest interface"), "{e3}");
    // The refused requests changed nothing.
    assert!(ip(&["-n", &ns.0, "addr", "show", "eth0"]).contains("10.99.8.3/24"));
}

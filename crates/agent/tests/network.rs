//! The guest's network as the agent sets it ([`ironcell_agent::network`]),
//! in a real network namespace standing in for the guest: a veth end with
//! the pod's MAC and a kernel name plays the VM's NIC. Its name, MTU,
//! addresses and routes become the pod's; a second update replaces them;
//! requests naming what the guest lacks are refused. Needs root
//! (namespaces); skipped loudly otherwise.

use ironcell_agent::network::{parse_routes, update_interface, update_routes, Interface};
use ironcell_protocol::agent;
use ironcell_testutil::netns::{in_netns, ip, Netns};

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
    let ns = format!("ic-agent-net-{}", std::process::id());
    let mut netns = Netns::default();
    netns.add(&ns);
    ip(&[
        "-n",
        &ns,
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
    ip(&["-n", &ns, "link", "set", "gw0", "up"]);

    let first = interface(&[("10.99.8.2", 24), ("fd00:99::2", 64)]);
    let routes = parse_routes(&[
        route("", 0, "10.99.8.1", "eth0"),
        route("10.50.0.0", 16, "10.99.8.254", "eth0"),
        route("192.168.77.0", 24, "", "eth0"),
    ])
    .unwrap();
    in_netns(&ns, || {
        update_interface(&first).unwrap();
        update_routes(&routes).unwrap();
    });
    let link = ip(&["-n", &ns, "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1400") && link.contains(",UP") && link.contains("02:42:0a:63:08:02"),
        "{link}"
    );
    let addrs = ip(&["-n", &ns, "addr", "show", "eth0"]);
    assert!(
        addrs.contains("inet 10.99.8.2/24 brd 10.99.8.255") && addrs.contains("fd00:99::2/64"),
        "{addrs}"
    );
    let table = ip(&["-n", &ns, "route", "show"]);
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
    in_netns(&ns, || {
        for _ in 0..2 {
            update_interface(&second).unwrap();
            update_routes(&fewer).unwrap();
        }
    });
    let addrs = ip(&["-n", &ns, "addr", "show", "eth0"]);
    assert!(
        addrs.contains("10.99.8.3/24")
            && !addrs.contains("10.99.8.2/")
            && !addrs.contains("fd00:99::2"),
        "{addrs}"
    );
    let table = ip(&["-n", &ns, "route", "show"]);
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
    let (e1, e2, e3) = in_netns(&ns, || {
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
    assert!(ip(&["-n", &ns, "addr", "show", "eth0"]).contains("10.99.8.3/24"));
}

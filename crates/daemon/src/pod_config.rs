//! What the daemon reads of the CRI's `runtime.v1.PodSandboxConfig`, which
//! containerd sends as a pod's options through the sandbox API.
//!
//! The messages are declared here, with only the fields read, rather than
//! taken from the `k8s-cri` crate, which would bring a whole CRI client
//! into the daemon; protobuf skips the fields not declared.

use std::collections::HashMap;

use crate::error::TaskError;

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxConfig {
    #[prost(string, tag = "2")]
    hostname: String,
    #[prost(message, optional, tag = "4")]
    dns_config: Option<DnsConfig>,
    #[prost(map = "string, string", tag = "7")]
    annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DnsConfig {
    #[prost(string, repeated, tag = "1")]
    servers: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    searches: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    options: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    security_context: Option<LinuxSandboxSecurityContext>,
    #[prost(map = "string, string", tag = "3")]
    sysctls: HashMap<String, String>,
    #[prost(message, optional, tag = "5")]
    resources: Option<LinuxContainerResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    namespace_options: Option<NamespaceOption>,
}

/// The modes are the CRI's `NamespaceMode`: 0 POD, 1 CONTAINER, 2 NODE.
#[derive(Clone, PartialEq, prost::Message)]
struct NamespaceOption {
    #[prost(int32, tag = "1")]
    network: i32,
    #[prost(int32, tag = "2")]
    pid: i32,
    #[prost(int32, tag = "3")]
    ipc: i32,
    #[prost(message, optional, tag = "5")]
    userns_options: Option<UserNamespace>,
}

/// Only the mode is read: a pod of its own user namespace is refused.
#[derive(Clone, PartialEq, prost::Message)]
struct UserNamespace {
    #[prost(int32, tag = "1")]
    mode: i32,
}

/// The CRI's `NamespaceMode` POD.
const POD: i32 = 0;

const NODE: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxContainerResources {
    #[prost(int64, tag = "1")]
    cpu_period: i64,
    #[prost(int64, tag = "2")]
    cpu_quota: i64,
    #[prost(int64, tag = "4")]
    memory_limit_in_bytes: i64,
}

/// A pod's configuration, as far as the daemon uses it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodConfig {
    /// The pod's cgroup (cgroupfs form), or empty when it names none or a
    /// systemd slice (the systemd driver's pods are left where they are;
    /// see docs/daemon.md).
    pub cgroup_parent: String,
    pub hostname: String,
    /// The pod's `/etc/resolv.conf` from its DNS config (the kubelet's
    /// cluster DNS), or empty when it has none: the host's is copied.
    pub resolv_conf: String,
    pub annotations: HashMap<String, String>,
    pub sysctls: HashMap<String, String>,
    /// The pod's resources (the sum of its containers' limits, from the
    /// kubelet): CPU quota and period, memory in bytes; 0 when unset.
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub memory: i64,
    /// hostNetwork, hostPID, hostIPC.
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// One PID namespace for the pod's containers (the kubelet's
    /// shareProcessNamespace: the CRI's POD mode).
    pub shared_pid: bool,
}

/// The sysctls of an IPC namespace (beside `fs.mqueue.*`).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Whether an `Any`'s type is the CRI's PodSandboxConfig (containerd sends
/// it as a sandbox's options).
pub(crate) fn is_pod_config(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some("runtime.v1.PodSandboxConfig")
}

impl PodConfig {
    /// Decodes and checks a PodSandboxConfig.
    pub fn decode(options: &[u8]) -> Result<PodConfig, TaskError> {
        use prost::Message;
        let config = PodSandboxConfig::decode(options).map_err(|e| {
            TaskError::InvalidArgument(format!("sandbox options: not a PodSandboxConfig: {e}"))
        })?;
        let linux = config.linux.unwrap_or_default();
        let parent = linux.cgroup_parent;
        if parent.starts_with('/') && parent.split('/').any(|c| c == "..") {
            return Err(TaskError::InvalidArgument(format!(
                "sandbox options: cgroup_parent {parent:?} escapes the cgroup root"
            )));
        }
        if config.hostname.len() > 64 {
            return Err(TaskError::InvalidArgument(format!(
                "sandbox options: hostname {:?} is longer than 64 bytes",
                config.hostname
            )));
        }
        let resolv_conf = match &config.dns_config {
            Some(dns) => resolv_conf(dns)?,
            None => String::new(),
        };
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .unwrap_or_default();
        // The kubelet's hostUsers: false. Neither a pod's holder nor its VM
        // makes a user namespace: its containers would fail to join one,
        // or run without the isolation asked for.
        if ns.userns_options.as_ref().is_some_and(|u| u.mode == POD) {
            return Err(TaskError::InvalidArgument(
                "sandbox options: a user namespace of the pod's own (hostUsers: false) is not \
                 supported by ironcelld's pods: their holder makes none"
                    .into(),
            ));
        }
        let resources = linux.resources.unwrap_or_default();
        Ok(PodConfig {
            cgroup_parent: if parent.starts_with('/') {
                parent
            } else {
                String::new()
            },
            hostname: config.hostname,
            resolv_conf,
            annotations: config.annotations,
            sysctls: linux.sysctls,
            cpu_quota: resources.cpu_quota,
            cpu_period: resources.cpu_period,
            memory: resources.memory_limit_in_bytes,
            host_network: ns.network == NODE,
            host_pid: ns.pid == NODE,
            host_ipc: ns.ipc == NODE,
            shared_pid: ns.pid == POD,
        })
    }

    /// The pod's sysctls as paths under `/proc/sys` with their values,
    /// sorted, for a namespace pod's holder to set in the pod's
    /// namespaces. Each must be one the pod's own namespaces hold: `net.*`
    /// with a network namespace of its own (`own_netns`), the IPC
    /// namespace's without hostIPC. A name is dotted (`net.ipv4.ip_forward`)
    /// or, as the kernel's sysctl(8) also reads it, slashed
    /// (`net/ipv4/conf/eth0.100/forwarding`).
    pub fn holder_sysctls(&self, own_netns: bool) -> Result<Vec<(String, String)>, TaskError> {
        let refuse = |name: &str, why: &str| {
            TaskError::InvalidArgument(format!("sandbox options: sysctl {name:?} {why}"))
        };
        let mut out = Vec::new();
        for (name, value) in &self.sysctls {
            let parts: Vec<&str> = if name.contains('/') {
                name.split('/').collect()
            } else {
                name.split('.').collect()
            };
            let good = |p: &&str| {
                !p.is_empty()
                    && *p != "."
                    && *p != ".."
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            };
            if !parts.iter().all(good) {
                return Err(refuse(name, "is not a sysctl name"));
            }
            let dotted = parts.join(".");
            let ipc = IPC_SYSCTLS.contains(&dotted.as_str()) || dotted.starts_with("fs.mqueue.");
            if parts[0] == "net" {
                if !own_netns {
                    return Err(refuse(name, "needs a network namespace of the pod's own"));
                }
            } else if !ipc {
                return Err(refuse(
                    name,
                    "is not held by the pod's namespaces: it would change the host",
                ));
            } else if self.host_ipc {
                return Err(refuse(
                    name,
                    "would change the host's IPC namespace (hostIPC)",
                ));
            }
            out.push((parts.join("/"), value.clone()));
        }
        out.sort();
        Ok(out)
    }
}

/// The resolv.conf(5) of a pod's DNS config: its search domains, one line
/// per name server, its options. Each word is checked, as it becomes a
/// word of the file: a server is an IP address (an IPv6 one may name its
/// zone), and no word is empty or holds a blank or a control character,
/// which could add a line of its own.
fn resolv_conf(dns: &DnsConfig) -> Result<String, TaskError> {
    let refuse = |what: &str, word: &str, why: &str| {
        TaskError::InvalidArgument(format!("sandbox options: DNS {what} {word:?} {why}"))
    };
    let plain = |what: &str, word: &str| {
        if word.is_empty() || word.len() > 255 {
            return Err(refuse(what, word, "is empty or longer than 255 bytes"));
        }
        if word.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse(what, word, "holds a blank or a control character"));
        }
        Ok(())
    };
    for server in &dns.servers {
        let (addr, zone) = server.split_once('%').unwrap_or((server, ""));
        let is_v6 = addr.parse::<std::net::Ipv6Addr>().is_ok();
        let good_zone = zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        let good = if server.contains('%') {
            is_v6 && !zone.is_empty() && good_zone
        } else {
            addr.parse::<std::net::IpAddr>().is_ok()
        };
        if !good {
            return Err(refuse("server", server, "is not an IP address"));
        }
    }
    for search in &dns.searches {
        plain("search domain", search)?;
    }
    for option in &dns.options {
        plain("option", option)?;
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text += &format!("search {}\n", dns.searches.join(" "));
    }
    for server in &dns.servers {
        text += &format!("nameserver {server}\n");
    }
    if !dns.options.is_empty() {
        text += &format!("options {}\n", dns.options.join(" "));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_holders_sysctls_are_the_pods_namespaces_own() {
        let with = |name: &str, host_ipc: bool| PodConfig {
            sysctls: HashMap::from([(name.to_string(), "1".to_string())]),
            host_ipc,
            ..Default::default()
        };
        let paths = |c: PodConfig, netns: bool| {
            c.holder_sysctls(netns)
                .map(|v| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>())
        };
        for (name, path) in [
            ("net.ipv4.ping_group_range", "net/ipv4/ping_group_range"),
            (
                "net/ipv4/conf/eth0.100/forwarding",
                "net/ipv4/conf/eth0.100/forwarding",
            ),
            ("kernel.shm_rmid_forced", "kernel/shm_rmid_forced"),
            ("fs.mqueue.msg_max", "fs/mqueue/msg_max"),
        ] {
            assert_eq!(
                paths(with(name, false), true).unwrap(),
                vec![path],
                "{name}"
            );
        }
        for (name, netns, host_ipc, why) in [
            ("kernel.hostname", true, false, "would change the host"),
            ("vm.swappiness", true, false, "would change the host"),
            ("net.ipv4.ip_forward", false, false, "network namespace"),
            ("kernel.msgmax", true, true, "hostIPC"),
            ("net.ipv4..x", true, false, "not a sysctl name"),
            ("net/../../kernel/x", true, false, "not a sysctl name"),
            ("net.ipv4.a b", true, false, "not a sysctl name"),
        ] {
            let e = paths(with(name, host_ipc), netns).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn the_fields_read_are_decoded_and_checked() {
        let mut linux = LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/pod1".into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: 0,
                    pid: NODE,
                    ipc: 1,
                    userns_options: Some(UserNamespace { mode: NODE }),
                }),
            }),
            sysctls: HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 250_000,
                memory_limit_in_bytes: 1 << 30,
            }),
        };
        let encode = |linux: &LinuxPodSandboxConfig| {
            PodSandboxConfig {
                hostname: "web".into(),
                dns_config: None,
                annotations: HashMap::from([("io.ironcell.sandbox".into(), "vm".into())]),
                linux: Some(linux.clone()),
            }
            .encode_to_vec()
        };
        let c = PodConfig::decode(&encode(&linux)).unwrap();
        assert_eq!(c.cgroup_parent, "/kubepods/pod1");
        assert_eq!(c.hostname, "web");
        assert_eq!(c.annotations["io.ironcell.sandbox"], "vm");
        assert_eq!(c.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(
            c.holder_sysctls(true).unwrap(),
            vec![("net/ipv4/ip_forward".to_string(), "1".to_string())]
        );
        assert_eq!(
            (c.cpu_quota, c.cpu_period, c.memory),
            (250_000, 100_000, 1 << 30)
        );
        assert_eq!(
            (c.host_network, c.host_pid, c.host_ipc),
            (false, true, false)
        );

        linux.cgroup_parent = "kubepods.slice".into();
        assert_eq!(
            PodConfig::decode(&encode(&linux)).unwrap().cgroup_parent,
            ""
        );
        linux.cgroup_parent = "/kubepods/../../etc".into();
        let e = PodConfig::decode(&encode(&linux)).unwrap_err().to_string();
        assert!(e.contains("escapes the cgroup root"), "{e}");
        linux.cgroup_parent = String::new();
        let ns = linux.security_context.as_mut().unwrap();
        ns.namespace_options.as_mut().unwrap().userns_options = Some(UserNamespace { mode: POD });
        let e = PodConfig::decode(&encode(&linux)).unwrap_err().to_string();
        assert!(e.contains("hostUsers: false"), "{e}");
        let e = PodConfig::decode(b"\xff\xff\xff").unwrap_err().to_string();
        assert!(e.contains("not a PodSandboxConfig"), "{e}");
    }

    #[test]
    fn a_pods_dns_config_becomes_its_resolv_conf() {
        let encode = |servers: &[&str], searches: &[&str], options: &[&str]| {
            let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
            PodSandboxConfig {
                dns_config: Some(DnsConfig {
                    servers: words(servers),
                    searches: words(searches),
                    options: words(options),
                }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let c = PodConfig::decode(&encode(
            &["10.96.0.10", "fd00::a", "fe80::1%eth0"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "edns0"],
        ))
        .unwrap();
        assert_eq!(
            c.resolv_conf,
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a\nnameserver fe80::1%eth0\n\
             options ndots:5 edns0\n"
        );
        // None, or an empty one: the host's file is copied.
        assert_eq!(PodConfig::decode(&[]).unwrap().resolv_conf, "");
        assert_eq!(
            PodConfig::decode(&encode(&[], &[], &[]))
                .unwrap()
                .resolv_conf,
            ""
        );
        for (servers, searches, options, why) in [
            (
                &["10.0.0.1\nnameserver 6.6.6.6"][..],
                &[][..],
                &[][..],
                "not an IP address",
            ),
            (&["dns.example"], &[], &[], "not an IP address"),
            (&["10.0.0.1%eth0"], &[], &[], "not an IP address"),
            (&["fe80::1%"], &[], &[], "not an IP address"),
            (
                &[],
                &["a.example\nnameserver 6.6.6.6"],
                &[],
                "blank or a control",
            ),
            (&[], &["a example"], &[], "blank or a control"),
            (&[], &[""], &[], "empty"),
            (&[], &[], &["ndots:5\roptions x"], "blank or a control"),
        ] {
            let e = PodConfig::decode(&encode(servers, searches, options))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(why) && e.contains("DNS") && !e.contains('\n'),
                "{e}"
            );
        }
    }
}

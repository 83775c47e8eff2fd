//! NUMA topology from sysfs, in the shape of IPA's `numa-topology` inspection collector:
//! memory per node, physical cores with their hyper-thread siblings, and the node of each NIC.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::read_trim;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ram {
    pub numa_node: u32,
    pub size_kb: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Core {
    pub cpu: u32,
    pub numa_node: u32,
    pub thread_siblings: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    pub name: String,
    pub numa_node: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub ram: Vec<Ram>,
    pub cpus: Vec<Core>,
    pub nics: Vec<Nic>,
}

#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("no NUMA nodes under {0}")]
    NoNodes(String),
    #[error("NUMA node {node}: {detail}")]
    Node { node: String, detail: String },
}

fn node_err(node: &str, detail: impl Into<String>) -> NumaError {
    NumaError::Node {
        node: node.to_string(),
        detail: detail.into(),
    }
}

/// `nodes` is /sys/devices/system/node, `net` /sys/class/net.
pub fn topology(nodes: &Path, net: &Path) -> Result<Topology, NumaError> {
    let mut ids: Vec<(u32, String)> = fs::read_dir(nodes)
        .map_err(|e| NumaError::NoNodes(format!("{}: {e}", nodes.display())))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("node")?.parse::<u32>().ok()?;
            Some((id, name))
        })
        .collect();
    if ids.is_empty() {
        return Err(NumaError::NoNodes(nodes.display().to_string()));
    }
    ids.sort();
    let mut ram = Vec::new();
    let mut cores: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    for (id, name) in &ids {
        let dir = nodes.join(name);
        let meminfo = fs::read_to_string(dir.join("meminfo"))
            .map_err(|e| node_err(name, format!("meminfo: {e}")))?;
        // "Node 0 MemTotal:       16315588 kB"
        let size_kb = meminfo
            .lines()
            .find_map(|l| l.split_once("MemTotal:").map(|(_, v)| v))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| node_err(name, "no MemTotal in meminfo"))?;
        ram.push(Ram {
            numa_node: *id,
            size_kb,
        });
        let entries = fs::read_dir(&dir).map_err(|e| node_err(name, e.to_string()))?;
        for e in entries.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let Some(thread) = fname
                .strip_prefix("cpu")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let core = read_trim(&e.path().join("topology/core_id"))
                .and_then(|c| c.parse::<u32>().ok())
                .ok_or_else(|| node_err(name, format!("{fname}: no topology/core_id")))?;
            cores.entry((*id, core)).or_default().push(thread);
        }
    }
    let cpus = cores
        .into_iter()
        .map(|((numa_node, cpu), mut threads)| {
            threads.sort_unstable();
            Core {
                cpu,
                numa_node,
                thread_siblings: threads,
            }
        })
        .collect();
    let mut nics: Vec<Nic> = fs::read_dir(net)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let numa = read_trim(&e.path().join("device/numa_node"))?
                        .parse()
                        .ok()?;
                    Some(Nic {
                        name: e.file_name().to_string_lossy().into_owned(),
                        numa_node: numa,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Topology { ram, cpus, nics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, v: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }

    #[test]
    fn two_nodes_with_hyperthreads() {
        let d = tempfile::tempdir().unwrap();
        let nodes = d.path().join("node");
        let net = d.path().join("net");
        write(
            &nodes.join("node0/meminfo"),
            "Node 0 MemTotal:       16315588 kB\nNode 0 MemFree: 1 kB\n",
        );
        write(
            &nodes.join("node1/meminfo"),
            "Node 1 MemTotal:       16777216 kB\n",
        );
        // Node 0: core 0 = cpu0 + cpu2; node 1: core 0 = cpu1 + cpu3.
        for (node, cpu, core) in [(0, 0, 0), (0, 2, 0), (1, 1, 0), (1, 3, 0)] {
            write(
                &nodes.join(format!("node{node}/cpu{cpu}/topology/core_id")),
                &format!("{core}\n"),
            );
        }
        write(&nodes.join("possible"), "0-1\n");
        write(&net.join("eth0/device/numa_node"), "1\n");
        write(&net.join("eth1/device/numa_node"), "0\n");
        fs::create_dir_all(net.join("lo")).unwrap();
        let t = topology(&nodes, &net).unwrap();
        assert_eq!(
            t.ram,
            vec![
                Ram {
                    numa_node: 0,
                    size_kb: 16315588
                },
                Ram {
                    numa_node: 1,
                    size_kb: 16777216
                }
            ]
        );
        assert_eq!(
            t.cpus,
            vec![
                Core {
                    cpu: 0,
                    numa_node: 0,
                    thread_siblings: vec![0, 2]
                },
                Core {
                    cpu: 0,
                    numa_node: 1,
                    thread_siblings: vec![1, 3]
                },
            ]
        );
        assert_eq!(
            t.nics,
            vec![
                Nic {
                    name: "eth0".into(),
                    numa_node: 1
                },
                Nic {
                    name: "eth1".into(),
                    numa_node: 0
                }
            ]
        );
    }

    #[test]
    fn broken_trees_are_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            topology(&d.path().join("none"), d.path()),
            Err(NumaError::NoNodes(_))
        ));
        fs::create_dir_all(d.path().join("node0")).unwrap();
        let e = topology(d.path(), d.path()).unwrap_err().to_string();
        assert!(e.contains("node0") && e.contains("meminfo"), "{e}");
        write(&d.path().join("node0/meminfo"), "nothing useful\n");
        assert!(topology(d.path(), d.path())
            .unwrap_err()
            .to_string()
            .contains("MemTotal"));
    }
}

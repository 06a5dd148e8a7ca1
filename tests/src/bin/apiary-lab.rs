//! `apiary-lab demo`: builds a throwaway lab (one node, two pods), attaches the data plane to the
//! pods' veths, sends traffic between the pods, and prints what the programs counted.
//!
//! `apiary-lab bench-pods [--seconds S] [--pods N] [--json PATH]`: pod-to-pod TCP
//! request/response rates (`bench_net`), then startup latency of N pods on one node and the
//! agents' memory (`bench_pods`); one table, and the figures as JSON (`bench_report`).

use std::{
    net::{SocketAddrV4, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use apiary_node_agent::dataplane::Dataplane;
use apiary_tests::{
    bench_report::Report,
    lab::{self, Lab, Pod},
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("bench-pods") => bench_pods(&args[1..]),
        _ => bail!("usage: apiary-lab demo | apiary-lab bench-pods {BENCH_USAGE}"),
    }
}

const BENCH_USAGE: &str = "[--seconds SECONDS_PER_ROUND] [--pods N] [--json PATH]";

/// Both halves of the benchmark in one run: the pod network, then the cluster.
fn bench_pods(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 2.0;
    let mut pods = 50;
    let mut json: Option<PathBuf> = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag}: missing value ({BENCH_USAGE})"))
        };
        match flag.as_str() {
            "--seconds" => {
                seconds = value()?
                    .parse()
                    .context("--seconds: expected a number of seconds per round")?;
            }
            "--pods" => {
                pods = value()?
                    .parse()
                    .context("--pods: expected a number of pods")?;
            }
            "--json" => json = Some(value()?.into()),
            other => bail!("unknown argument {other:?} ({BENCH_USAGE})"),
        }
    }
    anyhow::ensure!(pods > 0, "--pods: must be at least 1");
    anyhow::ensure!(seconds > 0.0, "--seconds: must be positive");
    eprintln!("measuring pod-to-pod TCP request/response rates …");
    let net = apiary_tests::bench_net::run(seconds, 3)?;
    eprintln!("measuring the startup of {pods} pods on one node and the agents' memory …");
    let pods = apiary_tests::bench_pods::run(pods)?;
    let report = Report { net, pods };
    print!("{}", report.table());
    if let Some(path) = json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    if let Some(reason) = apiary_tests::privileges::missing() {
        bail!("the demo {reason}");
    }
    let mut lab = Lab::new()?;
    let mut node = lab.add_node()?;
    let a = lab.add_pod(&mut node, "a")?;
    let b = lab.add_pod(&mut node, "b")?;
    lab.pin_neighbors(&a, &b)?;
    println!(
        "lab {}: node netns {} ({}), pods {} ({}) and {} ({})",
        lab.prefix(),
        node.netns,
        node.underlay_ip,
        a.netns,
        a.ip,
        b.netns,
        b.ip
    );

    let mut dataplane = Dataplane::load(&lab.pin_dir("demo"))?;
    for pod in [&a, &b] {
        let attached = lab::run_in(&node.netns, || dataplane.attach_pod(&pod.host_veth))??;
        println!("attached to pod {}: {attached}", pod.name);
    }
    println!("\n$ ip netns exec {} bpftool net show", node.netns);
    print!("{}", lab::exec(&node.netns, &["bpftool", "net", "show"])?);

    send(&a, &b, 5, 100)?;
    send(&b, &a, 3, 50)?;
    println!("\nsent 5 x 100-byte UDP datagrams a -> b and 3 x 50 bytes b -> a");

    let traffic = dataplane.pod_traffic()?;
    println!(
        "\n{:<4} {:<8} {:>13} {:>14} {:>12} {:>13}",
        "POD", "VETH", "FROM-POD-PKTS", "FROM-POD-BYTES", "TO-POD-PKTS", "TO-POD-BYTES"
    );
    for pod in [&a, &b] {
        let ifindex = lab::run_in(&node.netns, || {
            apiary_node_agent::dataplane::ifindex(&pod.host_veth)
        })??;
        let t = traffic
            .get(ifindex)?
            .with_context(|| format!("pod {} is not registered", pod.name))?;
        println!(
            "{:<4} {:<8} {:>13} {:>14} {:>12} {:>13}",
            pod.name,
            pod.host_veth,
            t.from_pod_packets,
            t.from_pod_bytes,
            t.to_pod_packets,
            t.to_pod_bytes
        );
    }
    drop(lab);
    println!("\nlab removed");
    Ok(())
}

/// Sends `count` datagrams of `len` bytes from `from` to `to` and waits until all arrived.
fn send(from: &Pod, to: &Pod, count: usize, len: usize) -> anyhow::Result<()> {
    let receiver = lab::udp_socket(&to.netns, SocketAddrV4::new(to.ip, 0))?;
    let to_addr = receiver.local_addr()?;
    receiver.set_read_timeout(Some(Duration::from_secs(5)))?;
    let sender: UdpSocket = lab::udp_socket(&from.netns, SocketAddrV4::new(from.ip, 0))?;
    let payload = vec![0xab; len];
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        sender.send_to(&payload, to_addr)?;
        let (n, _) = receiver.recv_from(&mut buf).context("datagram lost")?;
        anyhow::ensure!(n == len, "received {n} bytes, sent {len}");
    }
    Ok(())
}

//! `apiary-lab demo`: builds a throwaway lab (one node, two pods), attaches the data plane to the
//! pods' veths, sends traffic between the pods, and prints what the programs counted.
//!
//! `apiary-lab bench-pods [SECONDS]`: pod-to-pod TCP request/response rates (see `bench_net`).

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, bail};
use apiary_node_agent::dataplane::Dataplane;
use apiary_tests::lab::{self, Lab, Pod};

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => demo(),
        Some("bench-pods") => {
            let seconds = std::env::args()
                .nth(2)
                .map(|s| s.parse::<f64>())
                .transpose()
                .context("seconds per round: expected a number")?
                .unwrap_or(2.0);
            apiary_tests::bench_net::run(seconds, 3)
        }
        _ => bail!("usage: apiary-lab demo | apiary-lab bench-pods [SECONDS_PER_ROUND]"),
    }
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

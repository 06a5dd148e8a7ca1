//! The network between one control plane and the etcd members: a relay per member that can be
//! cut. Cut, bytes stop flowing both ways while connections stay open (a partition drops
//! packets; nothing resets), and new connections get nowhere.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub struct Link {
    cut: Arc<AtomicBool>,
    ports: Vec<u16>,
}

impl Link {
    /// Relays on 127.0.0.1 to each of the members' client ports `members`.
    pub async fn start(members: &[u16]) -> anyhow::Result<Self> {
        let cut = Arc::new(AtomicBool::new(false));
        let mut ports = Vec::new();
        for &member in members {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ports.push(listener.local_addr()?.port());
            let cut = Arc::clone(&cut);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", member)).await
                    else {
                        continue;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    tokio::spawn(relay(from_client, to_server, Arc::clone(&cut)));
                    tokio::spawn(relay(from_server, to_client, Arc::clone(&cut)));
                }
            });
        }
        Ok(Self { cut, ports })
    }

    /// The relays, as `--etcd-endpoints`.
    pub fn endpoints(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding what it read while the link is cut.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 16 << 10];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

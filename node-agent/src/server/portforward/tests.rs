//! A SPDY client drives sessions as kubectl does, against pods that are loopback listeners.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, ReadHalf, WriteHalf},
    net::TcpListener,
};

use super::{
    PortDialer, connect_loopback, session,
    spdy::{Decoder, Encoder, Frame, Headers},
};

/// A pod whose ports are this machine's loopback.
#[derive(Debug)]
struct Loopback;

#[async_trait::async_trait]
impl PortDialer for Loopback {
    fn pod_id(&self) -> &str {
        "sandbox-1"
    }

    async fn dial(&self, port: u16) -> Result<tokio::net::TcpStream, String> {
        let socket = tokio::task::spawn_blocking(move || connect_loopback(port, "sandbox-1"))
            .await
            .unwrap()?;
        socket.set_nonblocking(true).unwrap();
        Ok(tokio::net::TcpStream::from_std(socket).unwrap())
    }
}

/// A server that answers each connection with what it was sent, upper-cased, once the client
/// has finished sending.
async fn shouting_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut heard = Vec::new();
                socket.read_to_end(&mut heard).await.unwrap();
                socket.write_all(&heard.to_ascii_uppercase()).await.unwrap();
            });
        }
    });
    port
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Client {
    reader: ReadHalf<DuplexStream>,
    writer: WriteHalf<DuplexStream>,
    encoder: Encoder,
    decoder: Decoder,
    buffer: BytesMut,
}

impl Client {
    fn start() -> (Self, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_reader, server_writer) = tokio::io::split(server);
        let session = tokio::spawn(session::serve(
            server_reader,
            server_writer,
            Arc::new(Loopback),
            session::IDLE_TIMEOUT,
        ));
        let (reader, writer) = tokio::io::split(client);
        let client = Self {
            reader,
            writer,
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            buffer: BytesMut::new(),
        };
        (client, session)
    }

    async fn send(&mut self, frame: Frame) {
        let mut wire = BytesMut::new();
        self.encoder.encode(&frame, &mut wire);
        self.writer.write_all(&wire).await.unwrap();
    }

    /// Opens the error and data streams of one forwarded connection.
    async fn open(&mut self, error: u32, data: u32, port: u16, request: u32) {
        for (stream_id, kind) in [(error, "error"), (data, "data")] {
            let headers: Headers = vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), request.to_string()),
            ];
            self.send(Frame::SynStream {
                stream_id,
                fin: false,
                headers,
            })
            .await;
        }
    }

    async fn next(&mut self) -> Option<Frame> {
        let read = async {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.buffer).unwrap() {
                    return Some(frame);
                }
                if self.reader.read_buf(&mut self.buffer).await.unwrap() == 0 {
                    return None;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the server answers")
    }

    /// What arrives on each stream until every one of `streams` has ended.
    async fn until_ended(&mut self, streams: &[u32]) -> Vec<(u32, Vec<u8>)> {
        let mut received: Vec<(u32, Vec<u8>)> = streams.iter().map(|s| (*s, Vec::new())).collect();
        let mut open = streams.to_vec();
        while !open.is_empty() {
            match self.next().await.expect("the session stays up") {
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    if let Some((_, bytes)) = received.iter_mut().find(|(s, _)| *s == stream_id) {
                        bytes.extend_from_slice(&data);
                    }
                    if fin {
                        open.retain(|s| *s != stream_id);
                    }
                }
                Frame::SynReply { .. } | Frame::Ping { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        received
    }
}

#[tokio::test]
async fn every_stream_is_answered_and_pings_come_back() {
    let (mut client, _session) = Client::start();
    client.open(1, 3, closed_port(), 0).await;
    for stream_id in [1, 3] {
        assert_eq!(
            client.next().await,
            Some(Frame::SynReply {
                stream_id,
                fin: false,
                headers: Vec::new()
            })
        );
    }
    client.send(Frame::Ping { id: 9 }).await;
    let mut answered = false;
    for _ in 0..4 {
        if client.next().await == Some(Frame::Ping { id: 9 }) {
            answered = true;
            break;
        }
    }
    assert!(answered, "the ping came back");
}

#[tokio::test]
async fn a_refused_port_is_reported_on_its_error_stream_and_the_session_goes_on() {
    let (mut client, session) = Client::start();
    let refused = closed_port();
    client.open(1, 3, refused, 0).await;
    let received = client.until_ended(&[1, 3]).await;
    let error = String::from_utf8(received[0].1.clone()).unwrap();
    assert!(
        error.starts_with(&format!(
            "error forwarding port {refused} to pod sandbox-1, uid : failed to connect to localhost:{refused} inside namespace \"sandbox-1\", IPv4: dial tcp4 127.0.0.1:{refused}: connect: connection refused IPv6 dial tcp6 [::1]:{refused}: connect: "
        )),
        "{error}"
    );
    assert_eq!(received[1].1, b"", "nothing on the data stream");

    // The same session forwards two connections at once, to a port that answers.
    let port = shouting_server().await;
    client.open(5, 7, port, 1).await;
    client.open(9, 11, port, 2).await;
    for (stream_id, text) in [(7, "first"), (11, "second")] {
        client
            .send(Frame::Data {
                stream_id,
                fin: false,
                data: Bytes::from(text),
            })
            .await;
    }
    // The client's end of sending half-closes the connection; the answer still arrives.
    for stream_id in [11, 7] {
        client
            .send(Frame::Data {
                stream_id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }
    let received = client.until_ended(&[5, 7, 9, 11]).await;
    assert_eq!(
        received,
        [
            (5, Vec::new()),
            (7, b"FIRST".to_vec()),
            (9, Vec::new()),
            (11, b"SECOND".to_vec())
        ]
    );
    assert!(!session.is_finished());

    // Going away ends the session.
    client
        .send(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        })
        .await;
    tokio::time::timeout(std::time::Duration::from_secs(10), session)
        .await
        .expect("the session ends")
        .unwrap();
}

#[tokio::test]
async fn unknown_streams_are_refused_and_bad_ports_reported() {
    let (mut client, _session) = Client::start();
    client
        .send(Frame::SynStream {
            stream_id: 1,
            fin: false,
            headers: vec![("streamtype".into(), "stdin".into())],
        })
        .await;
    assert!(matches!(
        client.next().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    assert_eq!(
        client.next().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: super::spdy::REFUSED_STREAM
        })
    );
    client.open(3, 5, 0, 0).await;
    let received = client.until_ended(&[3, 5]).await;
    assert_eq!(
        String::from_utf8_lossy(&received[0].1),
        "error forwarding port 0 to pod sandbox-1, uid : invalid port \"0\""
    );
}

/// A server that echoes what each connection sends, as it comes.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = socket.into_split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn each_port_has_a_data_and_an_error_channel_that_start_with_the_port() {
    let (echo, refused) = (echo_server().await, closed_port());
    let (to_server, from_client) = tokio::sync::mpsc::channel::<(u8, Bytes)>(16);
    let (to_client, mut from_server) = tokio::sync::mpsc::channel(16);
    let incoming = futures::stream::unfold(from_client, |mut from_client| async move {
        from_client.recv().await.map(|m| (m, from_client))
    });
    let session = tokio::spawn(super::channels::serve(
        vec![echo, refused],
        Arc::new(Loopback),
        Box::pin(incoming),
        to_client,
    ));
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), from_server.recv())
            .await
            .expect("the server sends")
            .expect("the session is up")
    };
    for (channel, port) in [(0, echo), (1, echo), (2, refused), (3, refused)] {
        assert_eq!(
            next().await,
            (channel, Bytes::copy_from_slice(&port.to_le_bytes()))
        );
    }
    let (channel, error) = next().await;
    assert_eq!(channel, 3, "the second port's error channel");
    assert!(
        String::from_utf8_lossy(&error).starts_with(&format!(
            "error forwarding port {refused} to pod sandbox-1, uid : failed to connect to localhost:{refused}"
        )),
        "{error:?}"
    );
    to_server.send((0, Bytes::from("ping"))).await.unwrap();
    assert_eq!(next().await, (0, Bytes::from("ping")));
    // The client going away ends the session.
    drop(to_server);
    tokio::time::timeout(std::time::Duration::from_secs(10), session)
        .await
        .expect("the session ends")
        .unwrap();
}

#[test]
fn ports_come_from_the_query_as_the_kubelet_reads_them() {
    use super::channels::ports;
    assert_eq!(ports("port=8080,9090&port=1").unwrap(), [8080, 9090, 1]);
    for (query, error) in [
        ("", "query parameter \"port\" is required"),
        ("port=", "query parameter \"port\" cannot be empty"),
        ("port=0", "port \"0\" must be > 0"),
        (
            "port=http",
            "unable to parse \"http\" as a port: invalid digit found in string",
        ),
        (
            "port=70000",
            "unable to parse \"70000\" as a port: number too large to fit in target type",
        ),
    ] {
        assert_eq!(ports(query).unwrap_err().to_string(), error, "{query}");
    }
}

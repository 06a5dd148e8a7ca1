use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::*;

fn records_with_web(ip: &str) -> ClusterRecords {
    let mut records = ClusterRecords::default();
    let web = json!({"metadata": {"namespace": "default", "name": "web"},
                     "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
    records.apply_service(&serde_json::from_value(web).unwrap());
    records
}

#[tokio::test]
async fn messages_cross_in_order_and_a_clean_close_ends_the_stream() {
    let (mut agent, mut dns) = tokio::io::duplex(1 << 20);
    let records = records_with_web("10.96.0.20");
    // Sent borrowed, as the agent does under its lock; received owned.
    send(&mut agent, &ToDns::Records(&records)).await.unwrap();
    send(&mut agent, &ToDns::Records(&ClusterRecords::default()))
        .await
        .unwrap();
    drop(agent);
    let Some(ToDns::Records(first)) = receive::<ToDns>(&mut dns).await.unwrap() else {
        panic!("a first snapshot");
    };
    assert_eq!(first.serial(), records.serial());
    let name = hickory_proto::rr::Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    assert_eq!(
        first.resolve(&name, hickory_proto::rr::RecordType::A),
        records.resolve(&name, hickory_proto::rr::RecordType::A)
    );
    assert!(matches!(
        receive::<ToDns>(&mut dns).await.unwrap(),
        Some(ToDns::Records(_))
    ));
    assert!(receive::<ToDns>(&mut dns).await.unwrap().is_none());
}

#[tokio::test]
async fn a_cut_frame_is_an_error_not_a_close() {
    let frame = encode(&ToAgent::Answered(BTreeMap::from([("NOERROR".into(), 3)])));
    let (mut agent, mut dns) = tokio::io::duplex(1 << 16);
    dns.write_all(&frame[..frame.len() - 2]).await.unwrap();
    drop(dns);
    assert!(matches!(
        receive::<ToAgent>(&mut agent).await,
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
    ));
}

#[tokio::test]
async fn oversized_and_foreign_frames_are_refused() {
    let (mut agent, mut dns) = tokio::io::duplex(1 << 16);
    dns.write_all(&(MAX_FRAME + 1).to_be_bytes()).await.unwrap();
    assert!(matches!(
        receive::<ToAgent>(&mut agent).await,
        Err(Error::TooLarge { len }) if len == MAX_FRAME + 1
    ));
    let (mut agent, mut dns) = tokio::io::duplex(1 << 16);
    send(&mut dns, &json!({"Unknown": 1})).await.unwrap();
    assert!(matches!(
        receive::<ToAgent>(&mut agent).await,
        Err(Error::Decode(_))
    ));
}

#[test]
fn the_build_id_is_stable_within_a_build() {
    assert_eq!(build_id(), build_id());
    assert!(build_id().starts_with(env!("CARGO_PKG_VERSION")));
}

//! The `Store` contract, checked against both backends: every test in [`conformance!`] runs once
//! as `embedded::<name>`, once as `encrypted::<name>` (the embedded store behind the encryption
//! layer) and once as `etcd::<name>` (on an etcd of its own). Backend-specific
//! crash and outage tests follow in `embedded_crash` and `etcd_outage`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use apiary_control_plane::store::{Error, KeyValue, ListOptions, Store, WatchEvent, WatchStream};
use futures::StreamExt;

/// How long any one test may run before it counts as hung.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a watch event that should come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = crate::store_support::Fixture::embedded().await;
                    tokio::time::timeout(crate::store_conformance::TEST_TIMEOUT, crate::store_conformance::$name(fixture.store.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        mod encrypted {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = crate::store_support::Fixture::encrypted().await;
                    tokio::time::timeout(crate::store_conformance::TEST_TIMEOUT, crate::store_conformance::$name(fixture.store.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = crate::store_support::Fixture::etcd().await;
                    tokio::time::timeout(crate::store_conformance::TEST_TIMEOUT, crate::store_conformance::$name(fixture.store.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
    };
}

conformance!(
    create_then_get_and_already_exists,
    update_with_and_without_precondition,
    update_and_delete_of_missing_key_are_not_found,
    delete_with_precondition_returns_last_value,
    list_is_ordered_and_isolated_by_prefix,
    a_list_larger_than_grpcs_default_message_limit_is_whole,
    list_pages_read_one_revision,
    list_at_old_revision_sees_old_values,
    get_at_reads_many_keys_at_one_old_revision,
    list_at_future_revision_is_unavailable,
    watch_replays_history_then_delivers_live_events,
    watch_from_compacted_revision_fails,
    list_at_compacted_revision_fails,
    revisions_strictly_increase,
    concurrent_creates_of_one_key_have_one_winner,
    concurrent_writers_are_all_seen_by_every_watcher,
);

fn opts(limit: Option<usize>, continue_after: Option<&str>, revision: Option<i64>) -> ListOptions {
    ListOptions {
        limit,
        continue_after: continue_after.map(str::to_owned),
        revision,
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

async fn assert_no_event(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn put(kv: &KeyValue, prev: Option<&KeyValue>) -> WatchEvent {
    WatchEvent::Put {
        kv: kv.clone(),
        prev: prev.cloned(),
    }
}

async fn create_then_get_and_already_exists(store: Arc<dyn Store>) {
    let kv = store.create("/c/a", b"one".to_vec()).await.unwrap();
    assert_eq!(kv.key, "/c/a");
    assert_eq!(kv.value, b"one");
    assert!(kv.mod_revision > 0);
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(store.get("/c/a").await.unwrap(), Some(kv.clone()));

    match store.create("/c/a", b"two".to_vec()).await {
        Err(Error::AlreadyExists { key }) => assert_eq!(key, "/c/a"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // A failed write changes nothing and takes no revision.
    assert_eq!(store.get("/c/a").await.unwrap(), Some(kv.clone()));
    assert_eq!(store.revision().await.unwrap(), kv.mod_revision);
    assert_eq!(store.get("/c/missing").await.unwrap(), None);
    assert_eq!(
        store.get("/c/").await.unwrap(),
        None,
        "get is not a prefix match"
    );
}

async fn update_with_and_without_precondition(store: Arc<dyn Store>) {
    let v1 = store.create("/u/a", b"1".to_vec()).await.unwrap();
    let v2 = store.update("/u/a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(v2.value, b"2");
    assert_eq!(v2.create_revision, v1.create_revision);
    assert!(v2.mod_revision > v1.mod_revision);

    match store
        .update("/u/a", b"3".to_vec(), Some(v1.mod_revision))
        .await
    {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/u/a");
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(current, v2, "a conflict carries the current value");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("/u/a").await.unwrap(), Some(v2.clone()));

    let v3 = store
        .update("/u/a", b"3".to_vec(), Some(v2.mod_revision))
        .await
        .unwrap();
    assert_eq!(v3.value, b"3");
    assert_eq!(v3.create_revision, v1.create_revision);
    assert!(v3.mod_revision > v2.mod_revision);
    assert_eq!(store.get("/u/a").await.unwrap(), Some(v3));
}

async fn update_and_delete_of_missing_key_are_not_found(store: Arc<dyn Store>) {
    let other = store.create("/n/other", b"x".to_vec()).await.unwrap();
    let revision = other.mod_revision;
    for result in [
        store.update("/n/missing", b"v".to_vec(), None).await,
        store
            .update("/n/missing", b"v".to_vec(), Some(revision))
            .await,
        store.delete("/n/missing", None).await,
        store.delete("/n/missing", Some(revision)).await,
    ] {
        match result {
            Err(Error::NotFound { key }) => assert_eq!(key, "/n/missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert_eq!(store.get("/n/missing").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), revision);
}

async fn delete_with_precondition_returns_last_value(store: Arc<dyn Store>) {
    let v1 = store.create("/d/a", b"1".to_vec()).await.unwrap();
    let v2 = store.update("/d/a", b"2".to_vec(), None).await.unwrap();

    match store.delete("/d/a", Some(v1.mod_revision)).await {
        Err(Error::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(current, v2);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("/d/a").await.unwrap(), Some(v2.clone()));

    let deleted = store.delete("/d/a", Some(v2.mod_revision)).await.unwrap();
    assert_eq!(deleted.key, "/d/a");
    assert_eq!(deleted.value, b"2");
    assert_eq!(deleted.create_revision, v1.create_revision);
    assert!(deleted.mod_revision > v2.mod_revision);
    assert_eq!(
        store.revision().await.unwrap(),
        deleted.mod_revision,
        "the returned mod_revision is the deletion's"
    );
    assert_eq!(store.get("/d/a").await.unwrap(), None);
    assert!(matches!(
        store.delete("/d/a", None).await,
        Err(Error::NotFound { .. })
    ));

    // A key created again starts a new life.
    let again = store.create("/d/a", b"3".to_vec()).await.unwrap();
    assert!(again.create_revision > deleted.mod_revision);
    let gone = store.delete("/d/a", None).await.unwrap();
    assert_eq!(gone.value, b"3");
    assert_eq!(gone.create_revision, again.create_revision);
}

/// 6 MiB in one list: past gRPC's default 4 MiB receive limit, which 10,000 ConfigMaps with
/// their managed fields pass.
async fn a_list_larger_than_grpcs_default_message_limit_is_whole(store: Arc<dyn Store>) {
    let value = vec![b'x'; 512 * 1024];
    for i in 0..12 {
        store
            .create(&format!("/big/{i:02}"), value.clone())
            .await
            .unwrap();
    }
    let page = store.list("/big/", &ListOptions::default()).await.unwrap();
    assert_eq!(page.items.len(), 12);
    assert!(page.items.iter().all(|kv| kv.value.len() == value.len()));
}

async fn list_is_ordered_and_isolated_by_prefix(store: Arc<dyn Store>) {
    for key in [
        "/a/c",
        "/a/a",
        "/ab/x",
        "/a/b",
        "/a",
        "/b/1",
        "/a/b/nested",
        "/a0",
    ] {
        store.create(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let page = store.list("/a/", &ListOptions::default()).await.unwrap();
    assert_eq!(keys(&page.items), ["/a/a", "/a/b", "/a/b/nested", "/a/c"]);
    assert!(page.items.iter().all(|kv| kv.value == kv.key.as_bytes()));
    assert_eq!(page.revision, store.revision().await.unwrap());
    assert_eq!(page.continue_after, None);
    assert_eq!(page.remaining, None);

    // A limit of 0 means no limit, as in Kubernetes.
    let unlimited = store.list("/a/", &opts(Some(0), None, None)).await.unwrap();
    assert_eq!(unlimited.items, page.items);

    let page = store.list("/ab/", &ListOptions::default()).await.unwrap();
    assert_eq!(keys(&page.items), ["/ab/x"]);
    let page = store.list("/zz/", &ListOptions::default()).await.unwrap();
    assert!(page.items.is_empty());
    let all = store.list("/", &ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 8);
}

async fn list_pages_read_one_revision(store: Arc<dyn Store>) {
    let mut originals = BTreeMap::new();
    for i in 0..10 {
        let key = format!("/p/k{i:02}");
        let kv = store
            .create(&key, format!("v{i}").into_bytes())
            .await
            .unwrap();
        originals.insert(key, kv);
    }
    store.create("/pz", b"outside".to_vec()).await.unwrap();

    let first = store.list("/p/", &opts(Some(4), None, None)).await.unwrap();
    let at = first.revision;
    assert_eq!(keys(&first.items), ["/p/k00", "/p/k01", "/p/k02", "/p/k03"]);
    assert_eq!(first.continue_after.as_deref(), Some("/p/k03"));
    assert_eq!(first.remaining, Some(6));

    // Writes between pages must not show in later pages of the same list.
    store
        .update("/p/k05", b"changed".to_vec(), None)
        .await
        .unwrap();
    store.delete("/p/k06", None).await.unwrap();
    store.create("/p/k045", b"new".to_vec()).await.unwrap();
    store.create("/p/k10", b"new".to_vec()).await.unwrap();

    let second = store
        .list(
            "/p/",
            &opts(Some(4), first.continue_after.as_deref(), Some(at)),
        )
        .await
        .unwrap();
    assert_eq!(second.revision, at);
    assert_eq!(
        keys(&second.items),
        ["/p/k04", "/p/k05", "/p/k06", "/p/k07"]
    );
    for kv in &second.items {
        assert_eq!(kv, &originals[&kv.key]);
    }
    assert_eq!(second.remaining, Some(2));

    let third = store
        .list(
            "/p/",
            &opts(Some(4), second.continue_after.as_deref(), Some(at)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&third.items), ["/p/k08", "/p/k09"]);
    assert_eq!(third.continue_after, None);
    assert_eq!(third.remaining, None);

    // A limit that is exactly the number of keys leaves nothing to continue with.
    let exact = store
        .list("/p/", &opts(Some(10), None, Some(at)))
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 10);
    assert_eq!(exact.continue_after, None);
    assert_eq!(exact.remaining, None);

    let latest = store.list("/p/", &ListOptions::default()).await.unwrap();
    assert_eq!(
        keys(&latest.items),
        [
            "/p/k00", "/p/k01", "/p/k02", "/p/k03", "/p/k04", "/p/k045", "/p/k05", "/p/k07",
            "/p/k08", "/p/k09", "/p/k10"
        ]
    );
    assert_eq!(latest.items[6].value, b"changed");
}

async fn list_at_old_revision_sees_old_values(store: Arc<dyn Store>) {
    let a1 = store.create("/h/a", b"1".to_vec()).await.unwrap();
    let a2 = store.update("/h/a", b"2".to_vec(), None).await.unwrap();
    let b1 = store.create("/h/b", b"1".to_vec()).await.unwrap();
    let deleted = store.delete("/h/a", None).await.unwrap();

    let at = |revision| opts(None, None, Some(revision));
    let page = store.list("/h/", &at(a1.mod_revision)).await.unwrap();
    assert_eq!(page.items, std::slice::from_ref(&a1));
    assert_eq!(page.revision, a1.mod_revision);
    let page = store.list("/h/", &at(a2.mod_revision)).await.unwrap();
    assert_eq!(page.items, std::slice::from_ref(&a2));
    let page = store.list("/h/", &at(b1.mod_revision)).await.unwrap();
    assert_eq!(page.items, [a2, b1.clone()]);
    let page = store.list("/h/", &at(deleted.mod_revision)).await.unwrap();
    assert_eq!(page.items, std::slice::from_ref(&b1));
    let page = store.list("/h/", &ListOptions::default()).await.unwrap();
    assert_eq!(page.items, [b1]);
}

async fn get_at_reads_many_keys_at_one_old_revision(store: Arc<dyn Store>) {
    let a1 = store.create("/g/a", b"1".to_vec()).await.unwrap();
    // A key the others are a prefix of: read exactly, not as a prefix.
    let ab = store.create("/g/ab", b"1".to_vec()).await.unwrap();
    let b1 = store.create("/g/b", b"1".to_vec()).await.unwrap();
    let a2 = store.update("/g/a", b"2".to_vec(), None).await.unwrap();
    store.delete("/g/b", None).await.unwrap();
    let c1 = store.create("/g/c", b"1".to_vec()).await.unwrap();
    let keys: Vec<String> = ["/g/c", "/g/b", "/g/a", "/g/missing"]
        .map(str::to_owned)
        .to_vec();
    // In the order asked; what did not exist then is left out.
    assert_eq!(
        store.get_at(&keys, b1.mod_revision).await.unwrap(),
        [b1.clone(), a1.clone()]
    );
    assert_eq!(
        store.get_at(&keys, c1.mod_revision).await.unwrap(),
        [c1.clone(), a2]
    );
    assert_eq!(
        store
            .get_at(&["/g/a".to_owned()], a1.mod_revision)
            .await
            .unwrap(),
        [a1]
    );
    assert!(store.get_at(&[], c1.mod_revision).await.unwrap().is_empty());
    assert_eq!(
        store
            .get_at(&["/g/ab".to_owned()], c1.mod_revision)
            .await
            .unwrap(),
        [ab]
    );
    match store.get_at(&keys, c1.mod_revision + 100).await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

async fn list_at_future_revision_is_unavailable(store: Arc<dyn Store>) {
    let kv = store.create("/f/a", b"1".to_vec()).await.unwrap();
    match store
        .list("/f/", &opts(None, None, Some(kv.mod_revision + 100)))
        .await
    {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

async fn watch_replays_history_then_delivers_live_events(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let a1 = store.create("/w/a", b"1".to_vec()).await.unwrap();
    store.create("/wx/a", b"outside".to_vec()).await.unwrap();
    let a2 = store.update("/w/a", b"2".to_vec(), None).await.unwrap();
    let b1 = store.create("/w/b", b"1".to_vec()).await.unwrap();
    let a_deleted = store.delete("/w/a", None).await.unwrap();

    let mut stream = store.watch("/w/", start).await.unwrap();
    assert_eq!(next_event(&mut stream).await, put(&a1, None));
    assert_eq!(next_event(&mut stream).await, put(&a2, Some(&a1)));
    assert_eq!(next_event(&mut stream).await, put(&b1, None));
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Delete {
            prev: a2.clone(),
            revision: a_deleted.mod_revision
        }
    );

    // Live.
    let b2 = store.update("/w/b", b"2".to_vec(), None).await.unwrap();
    store.create("/wx/b", b"outside".to_vec()).await.unwrap();
    let c1 = store.create("/w/c", b"1".to_vec()).await.unwrap();
    let b_deleted = store.delete("/w/b", Some(b2.mod_revision)).await.unwrap();
    assert_eq!(next_event(&mut stream).await, put(&b2, Some(&b1)));
    assert_eq!(next_event(&mut stream).await, put(&c1, None));
    let event = next_event(&mut stream).await;
    assert_eq!(event.revision(), b_deleted.mod_revision);
    assert_eq!(
        event,
        WatchEvent::Delete {
            prev: b2,
            revision: b_deleted.mod_revision
        }
    );
    assert_no_event(&mut stream).await;

    // From the middle of the history: only what came after.
    let mut stream = store.watch("/w/", a2.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut stream).await, put(&b1, None));

    // From the latest revision: only what comes next.
    let latest = store.revision().await.unwrap();
    let mut stream = store.watch("/w/", latest).await.unwrap();
    assert_no_event(&mut stream).await;
    let d1 = store.create("/w/d", b"1".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut stream).await, put(&d1, None));
}

async fn watch_from_compacted_revision_fails(store: Arc<dyn Store>) {
    let v1 = store.create("/wc/a", b"1".to_vec()).await.unwrap();
    let v2 = store.update("/wc/a", b"2".to_vec(), None).await.unwrap();
    let v3 = store.update("/wc/a", b"3".to_vec(), None).await.unwrap();
    store.compact(v2.mod_revision).await.unwrap();

    match store.watch("/wc/", v1.mod_revision).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, v1.mod_revision);
            assert_eq!(compacted, v2.mod_revision);
        }
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    // Everything after the compacted revision is still there, previous values included.
    let mut stream = store.watch("/wc/", v2.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut stream).await, put(&v3, Some(&v2)));
    let v4 = store.update("/wc/a", b"4".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut stream).await, put(&v4, Some(&v3)));
}

async fn list_at_compacted_revision_fails(store: Arc<dyn Store>) {
    let a1 = store.create("/cl/a", b"1".to_vec()).await.unwrap();
    let a2 = store.update("/cl/a", b"2".to_vec(), None).await.unwrap();
    let gone = store.create("/cl/gone", b"1".to_vec()).await.unwrap();
    store.delete("/cl/gone", None).await.unwrap();
    let b1 = store.create("/cl/b", b"1".to_vec()).await.unwrap();
    let compacted = b1.mod_revision - 1;
    store.compact(compacted).await.unwrap();

    match store
        .list("/cl/", &opts(None, None, Some(a1.mod_revision)))
        .await
    {
        Err(Error::Compacted {
            requested,
            compacted: c,
        }) => {
            assert_eq!(requested, a1.mod_revision);
            assert_eq!(c, compacted);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(matches!(
        store
            .list("/cl/", &opts(None, None, Some(gone.mod_revision)))
            .await,
        Err(Error::Compacted { .. })
    ));
    // The compacted revision itself is still readable.
    let page = store
        .list("/cl/", &opts(None, None, Some(compacted)))
        .await
        .unwrap();
    assert_eq!(page.items, std::slice::from_ref(&a2));
    let page = store.list("/cl/", &ListOptions::default()).await.unwrap();
    assert_eq!(page.items, [a2.clone(), b1]);
    assert_eq!(store.get("/cl/a").await.unwrap(), Some(a2));

    // Compacting again at or below the compacted revision is a no-op; beyond the latest, an error.
    store.compact(a1.mod_revision).await.unwrap();
    store.compact(compacted).await.unwrap();
    let latest = store.revision().await.unwrap();
    assert!(matches!(
        store.compact(latest + 100).await,
        Err(Error::Unavailable(_))
    ));
    store.compact(latest).await.unwrap();
    assert_eq!(
        store
            .list("/cl/", &ListOptions::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

async fn revisions_strictly_increase(store: Arc<dyn Store>) {
    let mut last = store.revision().await.unwrap();
    let mut check = |revision: i64| {
        assert!(revision > last, "revision {revision} after {last}");
        last = revision;
    };
    check(
        store
            .create("/r/a", b"1".to_vec())
            .await
            .unwrap()
            .mod_revision,
    );
    check(
        store
            .create("/r/b", b"1".to_vec())
            .await
            .unwrap()
            .mod_revision,
    );
    let a = store.update("/r/a", b"2".to_vec(), None).await.unwrap();
    check(a.mod_revision);
    check(
        store
            .update("/r/a", b"3".to_vec(), Some(a.mod_revision))
            .await
            .unwrap()
            .mod_revision,
    );
    check(store.delete("/r/b", None).await.unwrap().mod_revision);
    check(
        store
            .create("/r/b", b"2".to_vec())
            .await
            .unwrap()
            .mod_revision,
    );
    assert_eq!(store.revision().await.unwrap(), last);
}

async fn concurrent_creates_of_one_key_have_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .create("/race/key", format!("writer-{i}").into_bytes())
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(kv) => winners.push(kv),
            Err(Error::AlreadyExists { key }) => assert_eq!(key, "/race/key"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    assert_eq!(store.get("/race/key").await.unwrap(), winners.pop());
}

async fn concurrent_writers_are_all_seen_by_every_watcher(store: Arc<dyn Store>) {
    const WRITERS: usize = 16;
    const KEYS_PER_WRITER: usize = 25;
    let start = store.revision().await.unwrap();
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(store.watch("/cw/", start).await.unwrap());
    }

    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut written = Vec::new();
                for k in 0..KEYS_PER_WRITER {
                    let key = format!("/cw/{w:02}/{k:02}");
                    let kv = store.create(&key, key.clone().into_bytes()).await.unwrap();
                    written.push(kv);
                }
                written
            })
        })
        .collect();
    let mut written = BTreeMap::new();
    for task in tasks {
        for kv in task.await.unwrap() {
            written.insert(kv.mod_revision, kv);
        }
    }
    assert_eq!(
        written.len(),
        WRITERS * KEYS_PER_WRITER,
        "revisions are unique"
    );

    for mut stream in watchers {
        let mut seen = BTreeMap::new();
        let mut last = start;
        while seen.len() < written.len() {
            match next_event(&mut stream).await {
                WatchEvent::Put { kv, prev: None } => {
                    assert!(kv.mod_revision > last, "events come in revision order");
                    last = kv.mod_revision;
                    seen.insert(kv.mod_revision, kv);
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(seen, written);
    }
    let page = store.list("/cw/", &ListOptions::default()).await.unwrap();
    assert_eq!(page.items.len(), written.len());
    let listed: BTreeSet<_> = page.items.into_iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(listed, written.keys().copied().collect());
}

/// The embedded store's own guarantees: fsync before acknowledging, catch-up of slow watchers.
mod embedded_crash {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use apiary_control_plane::store::embedded::EmbeddedStore;
    use apiary_control_plane::store::{Error, ListOptions, Store, WatchEvent};
    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::next_event;

    /// Set (to the store's path) when the test binary runs as the child of the kill -9 test.
    const CHILD_ENV: &str = "APIARY_STORE_WRITER_CHILD";
    const CHILD_TEST: &str = "store_conformance::embedded_crash::kill9_child_writer";

    async fn open(path: &Path) -> EmbeddedStore {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
            .await
            .unwrap()
            .unwrap()
    }

    /// Not a test by itself: the kill -9 test runs this binary again with `CHILD_ENV` set and
    /// only this test selected, to get a process it can kill while it writes. Otherwise it
    /// returns at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill9_child_writer() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let store = std::sync::Arc::new(open(Path::new(&path)).await);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("/k/{w}/{i:08}");
                        let kv = store.create(&key, key.clone().into_bytes()).await.unwrap();
                        // Printed only once the create is acknowledged, i.e. fsynced.
                        println!("ACK {key} {}", kv.mod_revision);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill9_loses_no_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("store.redb");
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() < 200 {
            assert!(Instant::now() < deadline, "the child wrote too slowly");
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("the child stopped writing")
                .unwrap()
                .expect("the child exited");
            if let Some(ack) = line.strip_prefix("ACK ") {
                let (key, revision) = ack.split_once(' ').unwrap();
                acked.insert(key.to_owned(), revision.parse::<i64>().unwrap());
            }
        }
        // SIGKILL, with writes in flight.
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        // Acknowledgements already in the pipe count too.
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(ack) = line.strip_prefix("ACK ") {
                let (key, revision) = ack.split_once(' ').unwrap();
                acked.insert(key.to_owned(), revision.parse::<i64>().unwrap());
            }
        }

        let store = open(&path).await;
        for (key, revision) in &acked {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} is lost"));
            assert_eq!(kv.value, key.as_bytes());
            assert_eq!(kv.mod_revision, *revision);
        }
        let max = acked.values().copied().max().unwrap();
        let latest = store.revision().await.unwrap();
        assert!(latest >= max);
        let page = store.list("/k/", &ListOptions::default()).await.unwrap();
        assert_eq!(page.revision, latest);
        assert!(page.items.len() >= acked.len());
        let next = store.create("/after-crash", b"x".to_vec()).await.unwrap();
        assert!(
            next.mod_revision > latest,
            "revisions continue after the crash"
        );
        println!(
            "kill -9 after {} acknowledged writes; {} on disk",
            acked.len(),
            page.items.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_data_history_and_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = open(&path).await;
        let a1 = store.create("/a", b"1".to_vec()).await.unwrap();
        let a2 = store.update("/a", b"2".to_vec(), None).await.unwrap();
        store.close().await.unwrap();

        let store = open(&path).await;
        assert_eq!(store.revision().await.unwrap(), a2.mod_revision);
        assert_eq!(store.get("/a").await.unwrap(), Some(a2.clone()));
        let mut stream = store.watch("/", 0).await.unwrap();
        assert_eq!(
            next_event(&mut stream).await,
            WatchEvent::Put {
                kv: a1.clone(),
                prev: None
            }
        );
        assert_eq!(
            next_event(&mut stream).await,
            WatchEvent::Put {
                kv: a2.clone(),
                prev: Some(a1)
            }
        );
        let b = store.create("/b", b"1".to_vec()).await.unwrap();
        assert_eq!(b.mod_revision, a2.mod_revision + 1);
        drop(stream);
        store.close().await.unwrap();

        // What follows a page is counted from the keys read back from the file, at the
        // page's revision, compaction included.
        let store = open(&path).await;
        store.create("/c", b"1".to_vec()).await.unwrap();
        store.delete("/b", None).await.unwrap();
        let first = store
            .list("/", &super::opts(Some(1), None, None))
            .await
            .unwrap();
        assert_eq!(first.remaining, Some(1), "/c only: /b is gone");
        let old = store
            .list("/", &super::opts(Some(1), None, Some(b.mod_revision)))
            .await
            .unwrap();
        assert_eq!(old.remaining, Some(1), "/b only: /c came later");
        store.compact(b.mod_revision).await.unwrap();
        store.close().await.unwrap();
        let store = open(&path).await;
        let old = store
            .list("/", &super::opts(Some(1), None, Some(b.mod_revision)))
            .await
            .unwrap();
        assert_eq!(old.remaining, Some(1));
        let now = store
            .list("/", &super::opts(Some(1), None, None))
            .await
            .unwrap();
        assert_eq!(now.remaining, Some(1));
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_open_of_one_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _store = open(&path).await;
        match EmbeddedStore::open(&path) {
            Err(Error::Unavailable(_)) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// A watcher that does not read while many transactions commit falls behind the live
    /// buffer; it must catch up from the log rather than lose events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lagging_watcher_catches_up_from_the_log() {
        const WRITES: i64 = 700;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("store.redb")).await;
        let first = store.create("/lag", b"0".to_vec()).await.unwrap();
        let mut stream = store.watch("/", first.mod_revision).await.unwrap();
        let mut expected = Vec::new();
        for i in 1..=WRITES {
            // One write at a time: one transaction, one buffer slot each.
            expected.push(
                store
                    .update("/lag", i.to_string().into_bytes(), None)
                    .await
                    .unwrap(),
            );
        }
        for kv in expected {
            match next_event(&mut stream).await {
                WatchEvent::Put { kv: got, prev } => {
                    assert_eq!(got, kv);
                    assert_eq!(prev.unwrap().mod_revision, kv.mod_revision - 1);
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    /// Group commit: 16 concurrent writers share fsyncs. Counted, not timed (a rate depends on
    /// the machine and on what else runs): while one transaction is fsynced the other writers'
    /// creates queue, so the store commits far fewer transactions than creates. It prints the
    /// rate and latency it saw (`cargo xtask bench api` measures them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_are_group_committed() {
        const WRITERS: usize = 16;
        const PER_WRITER: usize = 250;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir.path().join("store.redb")).await);
        let before = store.commits();
        let started = Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(PER_WRITER);
                    for i in 0..PER_WRITER {
                        let key = format!("/bench/{w:02}/{i:04}");
                        let t = Instant::now();
                        store.create(&key, vec![0; 512]).await.unwrap();
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{} durable creates by {WRITERS} writers in {elapsed:?}: {rate:.0}/s, p99 {p99:?}",
            latencies.len()
        );
        let writes = (WRITERS * PER_WRITER) as u64;
        let commits = store.commits() - before;
        println!("{writes} creates in {commits} transactions");
        // A store committing each create alone makes as many transactions as creates; here
        // about 8 creates shared each one (495 transactions for 4,000 creates).
        assert!(
            commits * 2 <= writes,
            "{commits} transactions for {writes} creates: no group commit"
        );
    }
}

/// etcd going away under load: clean errors while it is down, nothing acknowledged lost, and
/// the same store (and its watches) working again once it is back.
mod etcd_outage {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use apiary_control_plane::store::etcd::EtcdStore;
    use apiary_control_plane::store::{Error, ListOptions, Store, WatchEvent};

    use super::next_event;
    use crate::store_support::EtcdServer;

    const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

    #[derive(Debug)]
    struct Attempt {
        key: String,
        result: Result<i64, Error>,
        took: Duration,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_killed_mid_write_loses_no_acknowledged_write() {
        let mut server = EtcdServer::start().await;
        let store = EtcdStore::connect(&[server.endpoint()], "/outage")
            .await
            .unwrap()
            .with_request_timeout(REQUEST_TIMEOUT);
        let store = Arc::new(store);
        let start = store.revision().await.unwrap();
        let mut watch = store.watch("/k/", start).await.unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (store, stop, tx) = (store.clone(), stop.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("/k/{w}/{i:06}");
                        i += 1;
                        let t = Instant::now();
                        let result = store
                            .create(&key, key.clone().into_bytes())
                            .await
                            .map(|kv| kv.mod_revision);
                        let failed = result.is_err();
                        let _ = tx.send(Attempt {
                            key,
                            result,
                            took: t.elapsed(),
                        });
                        if failed {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        drop(tx);

        let mut attempts = Vec::new();
        let acked = |attempts: &[Attempt]| attempts.iter().filter(|a| a.result.is_ok()).count();
        while acked(&attempts) < 100 {
            attempts.push(rx.recv().await.unwrap());
        }
        server.kill();
        let killed = attempts.len();
        // Let every writer run into the outage.
        let outage_end = Instant::now() + REQUEST_TIMEOUT * 2;
        while Instant::now() < outage_end {
            if let Ok(Some(attempt)) = tokio::time::timeout_at(outage_end.into(), rx.recv()).await {
                attempts.push(attempt);
            }
        }
        let during: Vec<_> = attempts[killed..]
            .iter()
            .filter(|a| a.result.is_err())
            .collect();
        let failed_during = during.len();
        assert!(failed_during > 0, "no write failed while etcd was down");
        for attempt in during {
            assert!(
                matches!(attempt.result, Err(Error::Unavailable(_))),
                "{attempt:?}"
            );
            assert!(
                attempt.took < REQUEST_TIMEOUT + Duration::from_secs(1),
                "a failed write took {:?}",
                attempt.took
            );
        }

        server.restart().await;
        // The same store recovers by itself once etcd is back.
        let recovered_by = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = tokio::time::timeout_at(recovered_by.into(), rx.recv())
                .await
                .expect("writes did not succeed again after etcd restarted")
                .unwrap();
            let ok = attempt.result.is_ok();
            attempts.push(attempt);
            if ok {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        while let Some(attempt) = rx.recv().await {
            attempts.push(attempt);
        }

        let acknowledged: BTreeMap<i64, &str> = attempts
            .iter()
            .filter_map(|a| a.result.as_ref().ok().map(|r| (*r, a.key.as_str())))
            .collect();
        for (revision, key) in &acknowledged {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} is lost"));
            assert_eq!(kv.mod_revision, *revision);
            assert_eq!(kv.value, key.as_bytes());
        }
        let page = store.list("/k/", &ListOptions::default()).await.unwrap();
        assert!(page.items.len() >= acknowledged.len());

        // The watch reconnected and delivered every acknowledged write, in order.
        let mut last = start;
        let mut seen = 0;
        while seen < acknowledged.len() {
            match next_event(&mut watch).await {
                WatchEvent::Put { kv, .. } => {
                    assert!(kv.mod_revision > last, "watch events in revision order");
                    last = kv.mod_revision;
                    if acknowledged.contains_key(&kv.mod_revision) {
                        seen += 1;
                    }
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        println!(
            "{} writes acknowledged, {} failed during the outage",
            acknowledged.len(),
            failed_during
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_to_a_missing_etcd_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        match EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], "/x").await {
            Err(Error::Unavailable(_)) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    /// Two clusters on one etcd see only their own keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_prefixes_isolate_clusters() {
        let server = EtcdServer::start().await;
        let a = EtcdStore::connect(&[server.endpoint()], "/cluster-a")
            .await
            .unwrap();
        let b = EtcdStore::connect(&[server.endpoint()], "/cluster-b")
            .await
            .unwrap();
        let start = a.revision().await.unwrap();
        let mut watch_a = a.watch("", start).await.unwrap();
        b.create("/pods/x", b"b".to_vec()).await.unwrap();
        let mine = a.create("/pods/x", b"a".to_vec()).await.unwrap();
        assert_eq!(mine.key, "/pods/x");
        let page = a.list("", &ListOptions::default()).await.unwrap();
        assert_eq!(page.items, std::slice::from_ref(&mine));
        assert_eq!(b.get("/pods/x").await.unwrap().unwrap().value, b"b");
        assert_eq!(
            next_event(&mut watch_a).await,
            WatchEvent::Put {
                kv: mine,
                prev: None
            }
        );
    }
}

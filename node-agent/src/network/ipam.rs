//! Pod address management: one IPv4 address per pod uid from the node's pod CIDR, persisted in a
//! redb database so that an agent restart hands out neither a new address to a known pod nor a
//! taken address to a new one.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use ipnet::Ipv4Net;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

/// Pod uid → address (as `u32`, host order).
const LEASES: TableDefinition<&str, u32> = TableDefinition::new("leases");
/// `"next"` → the address after the last one handed out: allocation goes round the CIDR so that a
/// released address is reused as late as possible.
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const NEXT: &str = "next";

/// Errors from the address store. [`Error::Exhausted`] clears once pods go away; the others are
/// disk or configuration problems.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod_cidr {cidr}: needs at least 4 addresses (a /30 or larger)")]
    CidrTooSmall { cidr: Ipv4Net },
    #[error("no free address left in pod CIDR {cidr}")]
    Exhausted { cidr: Ipv4Net },
    #[error("pod uid must not be empty")]
    EmptyUid,
    #[error("IPAM database {path}")]
    Db {
        path: String,
        #[source]
        source: redb::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The persistent address allocator of one node.
#[derive(Debug)]
pub struct Ipam {
    db: Database,
    cidr: Ipv4Net,
    path: String,
}

impl Ipam {
    /// Opens (or creates) the database at `path` for addresses from `cidr`.
    pub fn open(path: &Path, cidr: Ipv4Net) -> Result<Self> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(Error::CidrTooSmall { cidr });
        }
        let path_str = path.display().to_string();
        let db_err = |e: redb::Error| Error::Db {
            path: path_str.clone(),
            source: e,
        };
        let db = Database::create(path).map_err(|e| db_err(e.into()))?;
        let ipam = Self {
            db,
            cidr,
            path: path_str,
        };
        // Create the tables so that readers never see them missing.
        ipam.write(|txn| {
            txn.open_table(LEASES)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(ipam)
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The first host address of the CIDR: reserved for the node (a gateway address), never
    /// handed to a pod.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// The address of `uid`: its existing lease, or a fresh one.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        if uid.is_empty() {
            return Err(Error::EmptyUid);
        }
        let cidr = self.cidr;
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(cidr.broadcast()) - 1;
        let mut exhausted = false;
        let ip = self.write(|txn| {
            let mut leases = txn.open_table(LEASES)?;
            if let Some(ip) = leases.get(uid)? {
                return Ok(Some(ip.value()));
            }
            let used = leases
                .iter()?
                .map(|entry| entry.map(|(_, ip)| ip.value()))
                .collect::<Result<BTreeSet<u32>, _>>()?;
            let mut meta = txn.open_table(META)?;
            let start = meta
                .get(NEXT)?
                .map(|n| n.value())
                .filter(|n| (first..=last).contains(n))
                .unwrap_or(first);
            let candidate = (start..=last)
                .chain(first..start)
                .find(|ip| !used.contains(ip));
            let Some(ip) = candidate else {
                exhausted = true;
                return Ok(None);
            };
            leases.insert(uid, ip)?;
            meta.insert(NEXT, if ip == last { first } else { ip + 1 })?;
            Ok(Some(ip))
        })?;
        match ip {
            Some(ip) => Ok(Ipv4Addr::from(ip)),
            None if exhausted => Err(Error::Exhausted { cidr }),
            None => unreachable!("no address only when exhausted"),
        }
    }

    /// The lease of `uid`, if it has one.
    pub fn get(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let leases = txn.open_table(LEASES)?;
            Ok(leases.get(uid)?.map(|ip| Ipv4Addr::from(ip.value())))
        })
    }

    /// Releases the lease of `uid`; returns the address it held, if any.
    pub fn release(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        self.write(|txn| {
            let mut leases = txn.open_table(LEASES)?;
            let old = leases.remove(uid)?.map(|ip| Ipv4Addr::from(ip.value()));
            Ok(old)
        })
    }

    /// Every lease, by pod uid.
    pub fn leases(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let leases = txn.open_table(LEASES)?;
            let all = leases
                .iter()?
                .map(|entry| {
                    entry.map(|(uid, ip)| (uid.value().to_owned(), Ipv4Addr::from(ip.value())))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Database) -> Result<T, redb::Error>) -> Result<T> {
        f(&self.db).map_err(|source| self.db_err(source))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let run = || -> Result<T, redb::Error> {
            let txn = self.db.begin_write()?;
            let value = f(&txn)?;
            txn.commit()?;
            Ok(value)
        };
        run().map_err(|source| self.db_err(source))
    }

    fn db_err(&self, source: redb::Error) -> Error {
        Error::Db {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn same_uid_same_address_and_reserved_addresses_are_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(&dir.path().join("ipam.redb"), cidr("10.9.0.0/29")).unwrap();
        let mut seen = HashSet::new();
        // A /29 has 8 addresses: network, gateway (.1), broadcast reserved → 5 for pods.
        for i in 0..5 {
            let ip = ipam.allocate(&format!("pod-{i}")).unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert_eq!(ipam.allocate(&format!("pod-{i}")).unwrap(), ip);
        }
        for reserved in ["10.9.0.0", "10.9.0.1", "10.9.0.7"] {
            assert!(!seen.contains(&reserved.parse().unwrap()), "{reserved}");
        }
        let err = ipam.allocate("one-too-many").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address left in pod CIDR 10.9.0.0/29"
        );
        // A release makes room again.
        let freed = ipam.release("pod-2").unwrap().unwrap();
        assert_eq!(ipam.allocate("late").unwrap(), freed);
        assert_eq!(
            ipam.release("pod-2").unwrap(),
            None,
            "release is idempotent"
        );
    }

    #[test]
    fn leases_survive_reopening_and_released_addresses_are_reused_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let (a, b) = {
            let ipam = Ipam::open(&path, cidr("10.9.1.0/24")).unwrap();
            let a = ipam.allocate("a").unwrap();
            let b = ipam.allocate("b").unwrap();
            ipam.release("a").unwrap();
            (a, b)
        };
        let ipam = Ipam::open(&path, cidr("10.9.1.0/24")).unwrap();
        assert_eq!(ipam.get("b").unwrap(), Some(b));
        assert_eq!(ipam.get("a").unwrap(), None);
        let c = ipam.allocate("c").unwrap();
        assert_ne!(c, a, "the freshly released address is not reused first");
        assert_ne!(c, b);
        assert_eq!(
            ipam.leases().unwrap(),
            vec![("b".to_owned(), b), ("c".to_owned(), c)]
        );
    }

    #[test]
    fn fifty_pods_across_reopens_get_distinct_stable_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let mut first = Vec::new();
        for round in 0..5 {
            // Every round is a new agent: reopen, re-ask for the old pods, add ten new ones.
            let ipam = Ipam::open(&path, cidr("10.9.2.0/24")).unwrap();
            for (i, ip) in first.iter().enumerate() {
                assert_eq!(ipam.allocate(&format!("pod-{i}")).unwrap(), *ip);
            }
            for i in round * 10..round * 10 + 10 {
                first.push(ipam.allocate(&format!("pod-{i}")).unwrap());
            }
        }
        let distinct: HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 50, "{first:?}");
        let ipam = Ipam::open(&path, cidr("10.9.2.0/24")).unwrap();
        assert_eq!(ipam.leases().unwrap().len(), 50);
    }

    #[test]
    fn bad_input_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = Ipam::open(&dir.path().join("x.redb"), cidr("10.9.0.0/31")).unwrap_err();
        assert!(err.to_string().starts_with("pod_cidr 10.9.0.0/31"), "{err}");
        let ipam = Ipam::open(&dir.path().join("y.redb"), cidr("10.9.0.0/24")).unwrap();
        assert_eq!(
            ipam.allocate("").unwrap_err().to_string(),
            "pod uid must not be empty"
        );
    }
}

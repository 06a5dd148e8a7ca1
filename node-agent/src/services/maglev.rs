//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI'16, §3.4): a lookup table of [`MAGLEV_TABLE_SIZE`] slots, each naming a
//! backend, that the data plane indexes with a connection hash.
//!
//! Every node and every agent restart must compute the same table for the same backends (a
//! connection keeps its backend whichever node's NodePort it arrives at, and across agent
//! upgrades), so the hashes are fixed functions of a backend's name, never randomly seeded, and
//! the table does not depend on the order backends are given in.
//!
//! What the algorithm guarantees: backends take slots in turns, one per turn, until the table is
//! full, so every backend holds `⌊M/N⌋` or `⌈M/N⌉` slots (with `N ≤ M`). Removing a backend
//! moves its own slots and, because the other backends' turns shift, a few more: the paper
//! measures this extra disruption as small, not zero.

use apiary_ebpf_common::{Backend, MAGLEV_TABLE_SIZE, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// The Maglev table of `backends`, by their stable names (see [`name_of`]): for each of the
/// [`MAGLEV_TABLE_SIZE`] slots, the index in `backends` of the backend it sends to.
///
/// Empty when `backends` is (the caller has no backend to send to). Names should be distinct:
/// two equal names get the same preference list and share its slots by input position. With
/// more backends than slots, only the first `MAGLEV_TABLE_SIZE` in name order get one.
pub fn table<K: AsRef<[u8]>>(backends: &[K]) -> Vec<usize> {
    const M: usize = MAGLEV_TABLE_SIZE;
    if backends.is_empty() {
        return Vec::new();
    }
    // Turns go in name order, so the table is the same whatever order the caller has.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| backends[a].as_ref().cmp(backends[b].as_ref()));
    // Each backend's preference list is the permutation `offset, offset + skip, …` (mod M);
    // M is prime and 1 ≤ skip < M, so it visits every slot. `next` is where it looks next.
    let (mut next, skips): (Vec<usize>, Vec<usize>) = order
        .iter()
        .map(|&i| {
            let name = backends[i].as_ref();
            let offset = hash(OFFSET_SEED, name) % M as u64;
            let skip = hash(SKIP_SEED, name) % (M as u64 - 1) + 1;
            // Both are below M, which fits any usize.
            (offset as usize, skip as usize)
        })
        .unzip();
    let mut entries = vec![usize::MAX; M];
    let mut filled = 0;
    loop {
        for (turn, &backend) in order.iter().enumerate() {
            let skip = skips[turn];
            // `slot` and `skip` are below M, so one subtraction is the modulo (and much cheaper:
            // this loop is most of the time of planning a large cluster).
            let advance = |slot: usize| {
                let next = slot + skip;
                if next >= M { next - M } else { next }
            };
            let mut slot = next[turn];
            while entries[slot] != usize::MAX {
                slot = advance(slot);
            }
            entries[slot] = backend;
            next[turn] = advance(slot);
            filled += 1;
            if filled == M {
                return entries;
            }
        }
    }
}

/// The stable name Maglev hashes a backend by, e.g. `10.0.0.5:8080/TCP`.
pub fn name_of(backend: &Backend) -> String {
    let [a, b, c, d] = backend.addr;
    let port = u16::from_be(backend.port_be);
    match backend.protocol {
        PROTO_TCP => format!("{a}.{b}.{c}.{d}:{port}/TCP"),
        PROTO_UDP => format!("{a}.{b}.{c}.{d}:{port}/UDP"),
        PROTO_SCTP => format!("{a}.{b}.{c}.{d}:{port}/SCTP"),
        other => format!("{a}.{b}.{c}.{d}:{port}/{other}"),
    }
}

/// Seeds of the two hashes: a backend's offset and its skip must be independent.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// 64-bit FNV-1a from a seeded basis, finished with MurmurHash3's `fmix64` so that every output
/// bit depends on every input bit (FNV alone mixes its last bytes poorly). Fixed forever: changing
/// it reshuffles every table at the next upgrade.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: usize = MAGLEV_TABLE_SIZE;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080/TCP", i / 250, i % 250 + 1))
            .collect()
    }

    fn counts(table: &[usize], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &i in table {
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn every_backend_holds_floor_or_ceil_of_its_share() {
        for n in [1, 2, 3, 7, 10, 64, 100, 333, 1000, M] {
            let table = table(&names(n));
            assert_eq!(table.len(), M);
            let (floor, ceil) = (M / n, M.div_ceil(n));
            for (i, count) in counts(&table, n).into_iter().enumerate() {
                assert!(
                    count == floor || count == ceil,
                    "{n} backends: backend {i} has {count} slots, not {floor} or {ceil}"
                );
            }
        }
    }

    #[test]
    fn more_backends_than_slots_give_the_first_names_one_slot_each() {
        let mut names = names(M + 50);
        names.reverse();
        let table = table(&names);
        let counts = counts(&table, names.len());
        let mut by_name: Vec<(&String, usize)> = names.iter().zip(counts).collect();
        by_name.sort();
        assert!(by_name[..M].iter().all(|(_, c)| *c == 1));
        assert!(by_name[M..].iter().all(|(_, c)| *c == 0));
    }

    #[test]
    fn empty_input_gives_an_empty_table() {
        assert!(table::<&str>(&[]).is_empty());
    }

    #[test]
    fn the_table_does_not_depend_on_input_order() {
        let forward = names(10);
        let mut backward = forward.clone();
        backward.reverse();
        let a: Vec<&str> = table(&forward)
            .into_iter()
            .map(|i| forward[i].as_str())
            .collect();
        let b: Vec<&str> = table(&backward)
            .into_iter()
            .map(|i| backward[i].as_str())
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn the_table_is_a_fixed_function_of_the_names() {
        // Pinned: another node, or this one after an upgrade, must compute the same slots. A
        // change here breaks connections through every NodePort during a rolling upgrade.
        let names = [
            "10.0.0.5:8080/TCP",
            "10.0.0.6:8080/TCP",
            "10.0.0.7:8080/TCP",
        ];
        let table = table(&names);
        let digest = table.iter().fold(0u64, |h, &i| {
            (h ^ i as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        assert_eq!(&table[..8], &[1, 1, 0, 0, 2, 2, 1, 0]);
        assert_eq!(digest, 0xb69f_60c6_6916_5898);
    }

    #[test]
    fn removing_a_backend_moves_its_slots_and_few_others() {
        for n in [5, 10, 50, 100] {
            let all = names(n);
            let before = table(&all);
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<&String> = all.iter().filter(|s| **s != all[removed]).collect();
                let after = table(&rest);
                let mut own = 0;
                let mut others = 0;
                for (b, a) in before.iter().zip(&after) {
                    if *b == removed {
                        own += 1;
                    } else if all[*b] != *rest[*a] {
                        others += 1;
                    }
                }
                assert!(own >= M / n, "the removed backend held {own} slots");
                // Measured with these names: at most 4.7 % of M (50 backends); allow 6 %.
                assert!(
                    others * 100 <= 6 * M,
                    "{n} backends, removing #{removed}: {others} other slots moved"
                );
            }
        }
    }

    #[test]
    fn names_carry_address_port_and_protocol() {
        let backend = Backend {
            addr: [10, 0, 0, 5],
            port_be: 8080u16.to_be(),
            protocol: PROTO_UDP,
            flags: 0,
        };
        assert_eq!(name_of(&backend), "10.0.0.5:8080/UDP");
    }
}

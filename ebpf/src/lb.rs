//! Backend choice, shared by the socket programs and the NodePort path: the client's previous
//! backend under session affinity, else the Maglev table's slot for the flow's hash.

use apiary_ebpf_common::{
    AffinityKey, AffinityValue, Backend, MAGLEV_TABLE_SIZE, SERVICE_AFFINITY, ServiceValue,
};
use aya_ebpf::helpers::generated::bpf_ktime_get_ns;

use crate::maps::{AFFINITY, BACKENDS, MAGLEV};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The backend (and its id) for a new flow of `service` with hash input `flow`, from `client`
/// (a network namespace cookie for sockets, an address for packets).
#[inline(always)]
pub fn choose(service: &ServiceValue, flow: u64, client: u64) -> Option<(u32, Backend)> {
    let affinity = service.flags & SERVICE_AFFINITY != 0;
    let key = AffinityKey {
        service_id: service.id,
        pad: 0,
        client,
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if affinity && let Some(previous) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup; a concurrent update of the same
        // client at worst loses one timestamp.
        let previous = unsafe { &mut *previous };
        let timeout = u64::from(service.affinity_timeout_secs) * NANOS_PER_SEC;
        if now.wrapping_sub(previous.last_used_ns) < timeout {
            // SAFETY: copied out at once.
            if let Some(backend) = unsafe { BACKENDS.get(previous.backend_id) } {
                previous.last_used_ns = now;
                return Some((previous.backend_id, *backend));
            }
        }
    }
    let table = MAGLEV.get_ptr(service.id)?;
    // SAFETY: the pointer comes from a successful lookup; the table is only read.
    let backend_id = *unsafe { &*table }.backend_ids.get(slot(flow))?;
    // SAFETY: copied out at once.
    let backend = *unsafe { BACKENDS.get(backend_id) }?;
    if affinity {
        let chosen = AffinityValue {
            backend_id,
            pad: 0,
            last_used_ns: now,
        };
        let _ = AFFINITY.insert(key, chosen, 0);
    }
    Some((backend_id, backend))
}

/// SplitMix64's finalizer: spreads sequential inputs (socket cookies) and packed flow tuples.
#[inline(always)]
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The Maglev slot of a flow: its hash scaled to the table by multiply-shift.
#[inline(always)]
fn slot(flow: u64) -> usize {
    let hash = mix(flow) >> 32;
    let slot = ((hash * MAGLEV_TABLE_SIZE as u64) >> 32) as usize;
    // Opaque to LLVM, which would otherwise fold the shift into the caller's indexing
    // (`>> 30 & !3`) and drop the bounds check: the verifier then sees an offset range that
    // reaches past the table.
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&slot) }
}

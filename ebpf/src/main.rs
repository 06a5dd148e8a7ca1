//! Apiary's data plane: BPF programs attached by the node agent.
//!
//! One module per attach point. Programs stay thin: the exported function maps a
//! `Result<i32, i32>` from its `try_` twin to a TC verdict.
#![no_std]
// `atomic_xadd`: the BPF target has no `AtomicU32`, and the per-endpoint flow count needs an
// atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod forward;
mod from_netdev;
mod from_pod;
mod lb;
mod maps;
mod masquerade;
mod nat;
mod nodeport;
mod policy;
mod socket_lb;
mod source;
mod to_pod;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never entered at run time.
    loop {}
}

/// GPL-compatible: helpers such as `bpf_redirect_peer` are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

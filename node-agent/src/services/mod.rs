//! Service load balancing, the pure part: what the `SERVICES`, `BACKENDS` and `MAGLEV` maps
//! must hold on this node, and the writes that get them there. No I/O: the map wrappers apply
//! a [`plan::Plan`].
//!
//! - [`frontends`]: Services and EndpointSlices → the desired frontends and their backends.
//! - [`maglev`]: the consistent-hashing table of a frontend's backends.
//! - [`plan`]: desired frontends and current maps → ordered writes, with stable ids.

pub mod frontends;
pub mod maglev;
pub mod plan;

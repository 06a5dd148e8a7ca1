//! The node's image store.

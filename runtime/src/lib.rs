//! Apiary container runtime.

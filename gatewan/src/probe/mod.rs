//! Tunnel probing: `stats` turns probes and replies into loss, latency, jitter, reorder
//! and a tunnel state.

pub mod stats;

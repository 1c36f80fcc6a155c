//! Tunnel probing: `wire` is the probe packet, `stats` turns probes and replies into loss,
//! latency, jitter, reorder and a tunnel state, `engine` runs the sockets of every tunnel.

pub mod engine;
pub mod stats;
pub mod wire;

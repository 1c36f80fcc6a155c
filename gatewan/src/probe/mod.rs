//! Tunnel probing: `wire` is the probe packet, `stats` turns probes and replies into loss,
//! latency, jitter, reorder and a tunnel state, `engine` runs the sockets of every tunnel,
//! `ondemand` measures one tunnel when an operator asks (`routingctl probe`).

pub mod engine;
pub mod ondemand;
pub mod stats;
pub mod wire;

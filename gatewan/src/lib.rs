pub mod api;
pub mod config;
pub mod daemon;
pub mod mesh;
pub mod metrics;
pub mod state_dir;
pub mod units;

//! The `metrics` section: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Checker;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint, e.g. `127.0.0.1:9469`; off when absent.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
}

impl MetricsConfig {
    pub fn validate(&self, c: &mut Checker) -> Option<SocketAddr> {
        let l = self.listen.as_ref()?;
        match l.value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                c.error(
                    Some(l),
                    "metrics.listen",
                    format!("{:?} is not ip:port, e.g. 127.0.0.1:9469", l.value),
                );
                None
            }
        }
    }
}

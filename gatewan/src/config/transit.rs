//! The `transits` section: the IP transit providers of this gatewan.

use serde::Deserialize;
use serde_saphyr::Spanned;

use gatewan_kit::units::Rate;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub addresses: Vec<Spanned<String>>,
    /// The transit's next hop, one address or one per family (`[v4, v6]`). Absent with
    /// several transits: found in the main table at start (ADR 0003).
    #[serde(default)]
    pub gateway: Option<Spanned<OneOrMany>>,
    pub capacity: Rate,
    #[serde(default)]
    pub cost: u32,
}

/// A value written alone or as a list.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

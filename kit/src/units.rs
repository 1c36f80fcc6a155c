//! Operator units in config files: durations (`100ms`, `5s`) and rates (`1Gbps`, `500Mbps`).
//! Both deserialize from strings so a mistake is reported at its line.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written `100ms`, `5s`, `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration: write e.g. 500ms, 5s or 1m"
            ))
        })
    }
}

/// A bit rate in bit/s, written `1Gbps`, `500Mbps`, `10Kbps` or `1000bps` (SI units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let digits_end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let mult: f64 = match unit.trim() {
            "bps" => 1.0,
            "Kbps" | "kbps" => 1e3,
            "Mbps" => 1e6,
            "Gbps" => 1e9,
            "Tbps" => 1e12,
            _ => {
                return Err(format!(
                    "{s:?} is not a rate: write e.g. 1Gbps, 500Mbps or 10Kbps"
                ));
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a rate: write e.g. 1Gbps, 500Mbps or 10Kbps"))?;
        let bps = n * mult;
        if !bps.is_finite() || bps < 0.0 || bps > u64::MAX as f64 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(Rate(bps.round() as u64))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Rate {
    /// `1.0 Gbps`, `339 kbps`: the style of the inspection output operators know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if b >= 1e9 {
            write!(f, "{:.1} Gbps", b / 1e9)
        } else if b >= 1e6 {
            write!(f, "{:.1} Mbps", b / 1e6)
        } else if b >= 1e3 {
            write!(f, "{:.0} kbps", b / 1e3)
        } else {
            write!(f, "{} bps", self.0)
        }
    }
}

/// A fraction written as a percentage, `5%` or `0.5%`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| (0.0..=100.0).contains(p))
            .map(|p| Percent(p / 100.0))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a percentage from 0% to 100%, e.g. 5% or 0.5%"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("1Gbps"), Ok(Rate(1_000_000_000)));
        assert_eq!(Rate::parse("500Mbps"), Ok(Rate(500_000_000)));
        assert_eq!(Rate::parse("2.5Gbps"), Ok(Rate(2_500_000_000)));
        assert_eq!(Rate::parse("339kbps"), Ok(Rate(339_000)));
        assert!(Rate::parse("1Gbs").is_err());
        assert!(Rate::parse("Gbps").is_err());
        assert!(Rate::parse("-1Gbps").is_err());
        assert_eq!(Rate(1_000_000_000).to_string(), "1.0 Gbps");
        assert_eq!(Rate(1_600_000).to_string(), "1.6 Mbps");
        assert_eq!(Rate(339_000).to_string(), "339 kbps");
    }
}

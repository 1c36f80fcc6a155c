//! Rendering: a table for people, YAML and JSON (numbers as numbers) for scripts. The
//! field names are the operator contract of ARCHITECTURE.md.

use gatewan_proto::v1;
use serde::Serialize;

use crate::Format;

#[derive(Serialize)]
struct Member {
    id: String,
    name: String,
    datacenter: String,
    role: &'static str,
    state: &'static str,
    addresses: Vec<String>,
    incarnation: u32,
    generation: u32,
    /// RFC 3339, UTC.
    last_change: Option<String>,
    version: String,
    local: bool,
}

fn role(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Gatewan) => "gatewan",
        Ok(v1::Role::Bgpctl) => "bgpctl",
        _ => "unknown",
    }
}

fn state(s: i32) -> &'static str {
    match v1::MemberState::try_from(s) {
        Ok(v1::MemberState::Alive) => "alive",
        Ok(v1::MemberState::Suspect) => "suspect",
        Ok(v1::MemberState::Down) => "down",
        _ => "unknown",
    }
}

fn rfc3339(unix_ms: i64) -> Option<String> {
    let ms = u64::try_from(unix_ms).ok().filter(|&m| m > 0)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(t).to_string())
}

fn render<T: Serialize>(v: &T, f: Format) -> anyhow::Result<String> {
    Ok(match f {
        Format::Json => serde_json::to_string_pretty(v)? + "\n",
        Format::Yaml => serde_saphyr::to_string(v)?,
        Format::Table => unreachable!("tables are rendered by each command"),
    })
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let l: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        out.push_str(l.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn members(members: &[v1::Member], f: Format) -> anyhow::Result<String> {
    let list: Vec<Member> = members
        .iter()
        .map(|m| Member {
            id: m.id.clone(),
            name: m.name.clone(),
            datacenter: m.datacenter.clone(),
            role: role(m.role),
            state: state(m.state),
            addresses: m.addresses.clone(),
            incarnation: m.incarnation,
            generation: m.generation,
            last_change: rfc3339(m.last_change_unix_ms),
            version: m.version.clone(),
            local: m.local,
        })
        .collect();
    if !matches!(f, Format::Table) {
        return render(&list, f);
    }
    let rows = list
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.name, if m.local { " *" } else { "" }),
                m.datacenter.clone(),
                m.role.to_string(),
                m.state.to_string(),
                m.addresses.join(","),
                format!("{}.{}", m.generation, m.incarnation),
                m.last_change.clone().unwrap_or_else(|| "-".into()),
                m.id.clone(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "DC",
            "ROLE",
            "STATE",
            "ADDRESSES",
            "GEN.INC",
            "LAST CHANGE",
            "ID",
        ],
        rows,
    ))
}

#[derive(Serialize)]
struct Key {
    fingerprint: String,
    primary: bool,
}

pub fn keys(keys: &[v1::KeyInfo], f: Format) -> anyhow::Result<String> {
    let list: Vec<Key> = keys
        .iter()
        .map(|k| Key {
            fingerprint: k.fingerprint.clone(),
            primary: k.primary,
        })
        .collect();
    if !matches!(f, Format::Table) {
        return render(&list, f);
    }
    let rows = list
        .iter()
        .map(|k| {
            vec![
                k.fingerprint.clone(),
                if k.primary {
                    "primary".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    Ok(table(&["FINGERPRINT", "ROLE"], rows))
}

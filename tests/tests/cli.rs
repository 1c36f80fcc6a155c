//! The command-line contract: `--check`, exit codes, messages that name file, line, field.

use std::process::Command;

use gatewan_tests::bin;

fn check(yaml: &str, keyring: bool) -> (Option<i32>, String, String) {
    let dir = tempfile_dir();
    let kr = dir.join("keyring");
    if keyring {
        let key = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
        assert!(key.status.success());
        std::fs::write(&kr, &key.stdout).unwrap();
    }
    let cfg = dir.join("gatewan.yaml");
    std::fs::write(&cfg, yaml.replace("KEYRING", &kr.display().to_string())).unwrap();
    let out = Command::new(bin("gatewan"))
        .arg("--check")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "gwcli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const GOOD: &str = "name: gw1\ndatacenter: sg1\nstate_dir: /tmp/x\nmesh:\n  keyring: KEYRING\ntransits:\n  - name: lumen\n    addresses: [192.0.2.1]\n    capacity: 1Gbps\n";

#[test]
fn check_accepts_a_good_config() {
    let (code, out, err) = check(GOOD, true);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration is valid"));
}

#[test]
fn check_names_file_line_and_field_and_exits_2() {
    let (code, _, err) = check(&GOOD.replace("1Gbps", "fast"), true);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gatewan.yaml:9: transits[0].capacity: \"fast\" is not a rate"),
        "{err}"
    );

    let (code, _, err) = check(&GOOD.replace("192.0.2.1", "192.0.2.256"), true);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gatewan.yaml:8: transits[0].addresses[0]"),
        "{err}"
    );

    let (code, _, err) = check(&format!("{GOOD}tunnel: {{}}\n"), true);
    assert_eq!(code, Some(2));
    assert!(err.contains("tunnel"), "unknown keys are reported: {err}");

    let (code, _, err) = check(GOOD, false);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("mesh.keyring") && err.contains("gatewan keygen"),
        "{err}"
    );

    let (code, _, err) = check(
        &GOOD.replace(
            "  keyring: KEYRING\n",
            "  keyring: KEYRING\n  probe_interval: 1s\n  probe_timeout: 2s\n",
        ),
        true,
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("probe_timeout must be shorter than probe_interval"),
        "{err}"
    );
}

#[test]
fn missing_config_is_a_usage_error() {
    let out = Command::new(bin("gatewan"))
        .args(["--check", "-c", "/nonexistent/gatewan.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gatewan.yaml"));
}

#[test]
fn bad_cli_input_exits_2() {
    let out = Command::new(bin("gatewan"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin("routingctl"))
        .args(["-o", "xml", "members"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn keygen_makes_distinct_valid_keys() {
    let a = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    let b = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    assert_ne!(a, b);
    assert!(gatewan::mesh::MeshKey::from_base64(a.trim()).is_ok());
}

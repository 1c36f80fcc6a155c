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
fn keys_never_go_on_the_command_line() {
    let key = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    // A key where a fingerprint goes: refused before anything is asked, exit 2.
    for verb in ["use", "remove"] {
        let out = routingctl(&["--socket", "/nonexistent.sock", "keyring", verb, &key]);
        assert_eq!(out.status.code(), Some(2), "keyring {verb} KEY");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--key-file"), "{err}");
        assert!(!err.contains("nonexistent.sock"), "asked the daemon: {err}");
    }
    // `install` takes no key argument, only a file or standard input.
    let out = routingctl(&["--socket", "/nonexistent.sock", "keyring", "install", &key]);
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile_dir();
    for (content, why) in [("", "no key in it"), ("a\nb\n", "more than one line")] {
        let f = dir.join("key");
        std::fs::write(&f, content).unwrap();
        let f = f.display().to_string();
        let out = routingctl(&[
            "--socket",
            "/nonexistent.sock",
            "keyring",
            "install",
            "--key-file",
            &f,
        ]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("--key-file {f}: {why}")), "{err}");
    }
    // A readable key goes on to the daemon (absent here: exit 1 naming the socket).
    let out = Command::new(bin("routingctl"))
        .args([
            "--socket",
            "/nonexistent.sock",
            "keyring",
            "install",
            "--key-file",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{key}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent.sock"));
    let _ = std::fs::remove_dir_all(&dir);
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
    assert!(gatewan_mesh::MeshKey::from_base64(a.trim()).is_ok());
}

/// Certificates for the TCP API, as PEM files in a directory: a CA, the daemon's
/// certificate (127.0.0.1 and localhost), a client signed by the CA, and a client signed by
/// another CA.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    foreign_cert: std::path::PathBuf,
    foreign_key: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>,
                    cn: &str,
                    names: &[&str],
                    usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (ca_pem, issuer) = ca("gatewan API CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            "gw1",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&issuer, "alice", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let (_, other) = ca("another CA");
        let (foreign_cert, foreign_key) =
            leaf(&other, "mallory", &[], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            foreign_cert: write("foreign.pem", foreign_cert),
            foreign_key: write("foreign.key", foreign_key),
        }
    }
}

/// A port nobody listens on now (the daemon binds it right after).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .unwrap()
            .port()
    }
}

/// A gatewan process, killed on drop with its files removed (kept when the test failed).
struct Daemon {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("gatewan.log")).unwrap_or_default();
            eprintln!(
                "==== gatewan log\n{log}\ntest files kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// routingctl with no ROUTINGCTL_* variables from the test's environment.
fn routingctl(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin("routingctl"));
    for v in [
        "ROUTINGCTL_SOCKET",
        "ROUTINGCTL_SERVER",
        "ROUTINGCTL_CA",
        "ROUTINGCTL_CERT",
        "ROUTINGCTL_KEY",
    ] {
        c.env_remove(v);
    }
    c.args(args).output().unwrap()
}

#[test]
fn routingctl_reaches_the_tcp_api_with_mutual_tls_only() {
    let dir = tempfile_dir();
    let pki = Pki::new(&dir);
    let key = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    assert!(key.status.success());
    let keyring = dir.join("keyring");
    std::fs::write(&keyring, &key.stdout).unwrap();
    let port = free_port(false);
    let cfg = dir.join("gatewan.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: gw1\ndatacenter: sg1\nstate_dir: {state}\nmesh:\n  bind: \"127.0.0.1:{mesh}\"\n  keyring: {keyring}\napi:\n  socket: {socket}\n  listen: \"127.0.0.1:{port}\"\n  tls:\n    cert: {cert}\n    key: {key}\n    client_ca: {ca}\n",
            state = dir.join("state").display(),
            mesh = free_port(true),
            keyring = keyring.display(),
            socket = dir.join("gw.sock").display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            ca = pki.ca.display(),
        ),
    )
    .unwrap();
    let checked = Command::new(bin("gatewan"))
        .args(["--check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let log = std::fs::File::create(dir.join("gatewan.log")).unwrap();
    let child = Command::new(bin("gatewan"))
        .arg("-c")
        .arg(&cfg)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _daemon = Daemon {
        child,
        dir: dir.clone(),
    };

    let url = format!("https://127.0.0.1:{port}");
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let members = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["members", "-o", "json"]);
        routingctl(&all)
    };

    let mut out = members(&["--ca", &ca, "--cert", &cert, "--key", &key]);
    let up = gatewan_tests::wait_until(std::time::Duration::from_secs(15), || {
        out = members(&["--ca", &ca, "--cert", &cert, "--key", &key]);
        out.status.success()
    });
    assert!(
        up,
        "routingctl over TCP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "gw1");
    assert_eq!(list[0]["local"], true);

    // A client certificate from another CA is refused during the handshake.
    let foreign = members(&[
        "--ca",
        &ca,
        "--cert",
        &path(&pki.foreign_cert),
        "--key",
        &path(&pki.foreign_key),
    ]);
    let err = String::from_utf8_lossy(&foreign.stderr);
    assert_eq!(foreign.status.code(), Some(1), "{err}");
    assert!(err.contains(&url) && err.contains("cannot reach"), "{err}");

    // A daemon certificate not signed by --ca is refused by routingctl.
    let wrong_ca = members(&[
        "--ca",
        &path(&pki.foreign_cert),
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    let err = String::from_utf8_lossy(&wrong_ca.stderr);
    assert_eq!(wrong_ca.status.code(), Some(1), "{err}");
    assert!(err.contains(&url), "{err}");

    // No client certificate: a usage error naming what is missing.
    let bare = members(&["--ca", &ca]);
    let err = String::from_utf8_lossy(&bare.stderr);
    assert_eq!(bare.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cert FILE") && err.contains("--key FILE"),
        "{err}"
    );
    let none = members(&[]);
    assert_eq!(none.status.code(), Some(2));

    // --socket and --server together are a usage error; the socket still answers.
    let both = routingctl(&["--socket", "/tmp/x.sock", "--server", &url, "members"]);
    assert_eq!(both.status.code(), Some(2));
    let local = routingctl(&[
        "--socket",
        &path(&dir.join("gw.sock")),
        "-o",
        "json",
        "members",
    ]);
    assert!(local.status.success());

    // The same through the environment.
    let env = Command::new(bin("routingctl"))
        .env_remove("ROUTINGCTL_SOCKET")
        .env("ROUTINGCTL_SERVER", &url)
        .env("ROUTINGCTL_CA", &ca)
        .env("ROUTINGCTL_CERT", &cert)
        .env("ROUTINGCTL_KEY", &key)
        .args(["-o", "json", "members"])
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
}

#[test]
fn check_refuses_a_tcp_api_without_tls() {
    let (code, _, err) = check(&format!("{GOOD}api:\n  listen: \"[::]:7947\"\n"), true);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gatewan.yaml:11: api.tls:") && err.contains("mutual TLS"),
        "{err}"
    );
    let (code, _, err) = check(
        &format!(
            "{GOOD}api:\n  listen: \"[::]:7947\"\n  tls:\n    cert: /nonexistent/api.pem\n    key: /nonexistent/api.key\n    client_ca: /nonexistent/ca.pem\n"
        ),
        true,
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gatewan.yaml:13: api.tls.cert: cannot read /nonexistent/api.pem"),
        "{err}"
    );
}

/// Two transits on a host that routes neither (a fresh namespace: lo only, no route with a
/// next hop): the gateways cannot be found, and the daemon exits 2 naming the field, as
/// for any config error (ADR 0003), before it joins the mesh.
#[test]
fn several_transits_without_a_gateway_found_exit_2_naming_the_field() {
    use gatewan_tests::{Netns, require_root};
    if !require_root("several_transits_without_a_gateway_found") {
        return;
    }
    let dir = tempfile_dir();
    let kr = dir.join("keyring");
    let key = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    std::fs::write(&kr, &key.stdout).unwrap();
    let cfg = dir.join("gatewan.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: gw1\ndatacenter: sg1\nstate_dir: {state}\nmesh:\n  keyring: {kr}\n  bind: \"127.0.0.1:7946\"\ntransits:\n  - name: lumen\n    interface: lo\n    addresses: [127.0.0.2]\n    capacity: 1Gbps\n  - name: cogent\n    interface: lo\n    addresses: [127.0.0.3]\n    gateway: 127.0.0.9\n    capacity: 1Gbps\napi:\n  socket: {sock}\n",
            state = dir.join("state").display(),
            kr = kr.display(),
            sock = dir.join("api.sock").display(),
        ),
    )
    .unwrap();
    let ns = Netns::new();
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let out = ns.cmd(bin("gatewan")).arg("-c").arg(&cfg).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("gatewan.yaml: transits[0].gateway: transit \"lumen\" has IPv4 addresses but no route of the main table has a next hop through lo"),
        "{err}"
    );
    assert!(
        !err.contains("transits[1]"),
        "cogent's gateway is named: {err}"
    );
}

/// `gatewan init` on a host (a fresh namespace, its own hostname) with one transit, a veth
/// with an address and the default route: the config it writes, with a keyring from
/// `gatewan keygen`, passes `gatewan --check`. It never replaces the file without
/// `--force`, and an argument that does not fit the host exits 2 naming its flag.
#[test]
fn init_writes_a_config_that_passes_check() {
    use gatewan_tests::{Netns, require_program, require_root};
    if !require_root("init_writes_a_config_that_passes_check")
        || !require_program("init_writes_a_config_that_passes_check", "unshare")
    {
        return;
    }
    let dir = tempfile_dir();
    let kr = dir.join("keyring");
    let key = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    assert!(key.status.success());
    std::fs::write(&kr, &key.stdout).unwrap();
    let ns = Netns::new();
    ns.exec_ok(&[
        "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
    ]);
    ns.exec_ok(&["ip", "link", "set", "eth1p", "up"]);
    ns.exec_ok(&["ip", "link", "set", "eth1", "up"]);
    ns.exec_ok(&["ip", "addr", "add", "198.51.100.10/24", "dev", "eth1"]);
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
        "dev",
        "eth1",
    ]);
    let cfg = dir.join("gatewan.yaml");
    // Its own UTS namespace, so that the name comes from a hostname the test knows.
    let init = |extra: &[&str]| {
        ns.cmd("unshare")
            .args([
                "--uts",
                "sh",
                "-c",
                "hostname gw-init.example.net && exec \"$0\" \"$@\"",
            ])
            .arg(bin("gatewan"))
            .args([
                "init",
                "--datacenter",
                "dc1",
                "--seed",
                "192.0.2.1:7946",
                "--keyring",
            ])
            .arg(&kr)
            .arg("--output")
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    for want in [
        "name: gw-init\n",
        "datacenter: dc1\n",
        "seeds: [\"192.0.2.1:7946\"]",
        "  - name: eth1\n    interface: eth1\n    addresses: [198.51.100.10]\n",
        "# gateway: [198.51.100.1]",
        // A veth that is up reports 10 Gbit/s.
        "capacity: 10Gbps",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let check = Command::new(bin("gatewan"))
        .args(["--check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );

    let out = init(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists: give --force to replace it"), "{err}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
    let out = init(&["--force", "--transit", "eth1=lumen"]);
    assert!(out.status.success());
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("  - name: lumen\n")
    );

    let out = init(&["--force", "--transit", "eth9=cogent"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--transit eth9=: eth9 is no transit of this host"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fabric.vtep` left out is the one IPv4 address of `fabric.interface`, read at start:
/// `--check` accepts the file; the daemon exits 2 naming `fabric.vtep`, before it joins
/// the mesh, while the interface has none or two; with one, it starts and announces it to
/// the mesh beside the transit's address (the default `mesh.advertise`).
#[test]
fn fabric_vtep_left_out_is_read_from_fabric_interface_at_start() {
    use gatewan_tests::{Netns, require_root, routingctl, wait_until, write_keyring};
    if !require_root("fabric_vtep_left_out_is_read_from_fabric_interface_at_start") {
        return;
    }
    let dir = tempfile_dir();
    let kr = dir.join("keyring");
    let key = Command::new(bin("gatewan")).arg("keygen").output().unwrap();
    write_keyring(&kr, &[String::from_utf8_lossy(&key.stdout).trim()]);
    let cfg = dir.join("gatewan.yaml");
    let sock = dir.join("api.sock");
    std::fs::write(
        &cfg,
        format!(
            "name: gw1\ndatacenter: sg1\nstate_dir: {state}\nmesh:\n  keyring: {kr}\ntransits:\n  - name: lumen\n    interface: eth1\n    addresses: [198.51.100.10]\n    capacity: 1Gbps\ntunnels:\n  pairing: all\nfabric:\n  vni: 100\n  interface: eth0\napi:\n  socket: {sock}\n",
            state = dir.join("state").display(),
            kr = kr.display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let check = Command::new(bin("gatewan"))
        .args(["--check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "--check validates the file, not the host: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let ns = Netns::new();
    for (iface, peer) in [("eth1", "eth1p"), ("eth0", "eth0p")] {
        ns.exec_ok(&[
            "ip", "link", "add", iface, "type", "veth", "peer", "name", peer,
        ]);
        ns.exec_ok(&["ip", "link", "set", peer, "up"]);
        ns.exec_ok(&["ip", "link", "set", iface, "up"]);
    }
    ns.exec_ok(&["ip", "addr", "add", "198.51.100.10/24", "dev", "eth1"]);
    let start = || {
        let out = ns.cmd(bin("gatewan")).arg("-c").arg(&cfg).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("gatewan.yaml:15: fabric.vtep: not set, so it is the IPv4 address of fabric.interface eth0, but eth0 has none of global scope"),
        "{err}"
    );
    ns.exec_ok(&["ip", "addr", "add", "10.1.255.11/32", "dev", "eth0"]);
    ns.exec_ok(&["ip", "addr", "add", "10.1.255.12/32", "dev", "eth0"]);
    let (code, err) = start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("gatewan.yaml:15: fabric.vtep")
            && err.contains("eth0 has 2 (10.1.255.11, 10.1.255.12): set fabric.vtep"),
        "{err}"
    );
    assert!(
        !dir.join("state").exists(),
        "nothing started before the config was complete"
    );

    ns.exec_ok(&["ip", "addr", "del", "10.1.255.12/32", "dev", "eth0"]);
    let log = std::fs::File::create(dir.join("gatewan.log")).unwrap();
    let mut daemon = ns
        .cmd(bin("gatewan"))
        .arg("-c")
        .arg(&cfg)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut addresses = None;
    let announced = wait_until(std::time::Duration::from_secs(10), || {
        let out = routingctl(&sock, &["-o", "json", "members"]);
        let members: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_default();
        addresses = members.first().map(|m| m["addresses"].clone());
        addresses.is_some()
    });
    let logs = std::fs::read_to_string(dir.join("gatewan.log")).unwrap_or_default();
    assert!(announced, "the gatewan did not start:\n{logs}");
    assert_eq!(
        addresses,
        Some(serde_json::json!([
            "198.51.100.10:7946",
            "10.1.255.11:7946"
        ])),
        "{logs}"
    );
    // Killed with the namespace's processes.
    drop(ns);
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

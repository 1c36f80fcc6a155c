//! The gossip mesh across real gatewan processes (issue 2's fault list).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatewan_mesh::{Keyring, MeshKey};
use gatewan_tests::*;

const DROPPED: &str = "gatewan_mesh_datagrams_dropped_total";

fn dropped(c: &Cluster, i: usize, reason: &str) -> f64 {
    c.metric(i, &format!("{DROPPED}{{reason=\"{reason}\"}}"))
        .unwrap_or(-1.0)
}

fn down_or_suspect(c: &Cluster, i: usize) -> f64 {
    c.metric(i, "gatewan_mesh_members{state=\"down\"}")
        .unwrap_or(0.0)
        + c.metric(i, "gatewan_mesh_members{state=\"suspect\"}")
            .unwrap_or(0.0)
}

#[test]
fn members_converge_and_routingctl_shows_them() {
    if !require_root("members_converge") {
        return;
    }
    let c = Cluster::simple("converge", 3);
    c.wait_converged(3, Duration::from_secs(10));
    let m = c.members(0).unwrap();
    let gw3 = m.iter().find(|m| m["name"] == "gw3").unwrap();
    assert_eq!(gw3["datacenter"], "dc2");
    assert_eq!(gw3["role"], "gatewan");
    assert_eq!(gw3["addresses"][0], "127.0.0.3:7946");
    assert!(
        gw3["generation"].is_u64() && gw3["incarnation"].is_u64(),
        "numbers stay numbers in JSON"
    );
    assert_eq!(m.iter().filter(|m| m["local"] == true).count(), 1);

    let table = routingctl(&c.nodes[0].socket, &["members"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("NAME") && text.contains("gw2") && text.contains("alive"),
        "{text}"
    );
    let yaml = routingctl(&c.nodes[0].socket, &["-o", "yaml", "members"]);
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("datacenter: dc1"));

    // The daemon is not there: exit 1, naming the socket.
    let missing = c.dir.join("nowhere.sock");
    let out = routingctl(&missing, &["members"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.sock"));
    // The API socket is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&c.nodes[0].socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn killed_member_is_marked_down_and_rejoins_with_higher_generation() {
    if !require_root("kill9") {
        return;
    }
    let mut c = Cluster::simple("kill9", 3);
    c.wait_converged(3, Duration::from_secs(10));
    let before = c
        .members(0)
        .unwrap()
        .into_iter()
        .find(|m| m["name"] == "gw3")
        .unwrap();

    let t0 = Instant::now();
    c.kill9(2);
    let detected = wait_until(Duration::from_secs(15), || {
        (0..2).all(|i| c.state_of(i, "gw3").as_deref() == Some("down"))
    });
    let took = t0.elapsed();
    assert!(detected, "gw3 not marked down by all within 15 s");
    eprintln!("kill -9 detected by all members in {took:?}");
    assert!(
        took <= Duration::from_secs(10),
        "detection took {took:?}, target is 10 s"
    );

    c.restart(2);
    let back = wait_until(Duration::from_secs(10), || {
        (0..3).all(|i| c.sees_all_alive(i, 3))
    });
    assert!(
        back,
        "restarted gw3 did not rejoin: {:?}",
        (0..3).map(|i| c.members(i)).collect::<Vec<_>>()
    );
    let after = c
        .members(0)
        .unwrap()
        .into_iter()
        .find(|m| m["name"] == "gw3")
        .unwrap();
    assert_eq!(after["id"], before["id"], "same node id after restart");
    let g = |m: &serde_json::Value| {
        (
            m["generation"].as_u64().unwrap(),
            m["incarnation"].as_u64().unwrap(),
        )
    };
    assert!(
        g(&after) > g(&before),
        "rejoined with (generation, incarnation) {:?} after {:?}",
        g(&after),
        g(&before)
    );
}

#[test]
fn foreign_key_never_joins_nor_disturbs() {
    if !require_root("foreign_key") {
        return;
    }
    let mut c = Cluster::simple("foreign", 3);
    c.wait_converged(3, Duration::from_secs(10));
    let stranger_keyring = c.dir.join("stranger.keyring");
    write_keyring(&stranger_keyring, &[&MeshKey::generate().to_base64()]);
    let addr: SocketAddr = "127.0.0.9:7946".parse().unwrap();
    c.add_with_keyring(
        NodeSpec {
            name: "stranger".into(),
            datacenter: "dc9".into(),
            bind: addr,
            advertise: vec![addr],
            seeds: vec!["127.0.0.1:7946".parse().unwrap()],
        },
        &stranger_keyring,
    );
    // It keeps knocking (seed retries every 2 s); give it several tries.
    std::thread::sleep(Duration::from_secs(7));
    for i in 0..3 {
        assert!(c.sees_all_alive(i, 3), "node {i} changed membership");
    }
    let alone = c.members(3).unwrap();
    assert_eq!(alone.len(), 1, "the stranger sees only itself: {alone:?}");
    assert!(
        dropped(&c, 0, "unauthenticated") > 0.0,
        "the seed counts the stranger's datagrams"
    );
}

/// `serf keys`-like rotation: each step is asked of one member, which applies it and asks
/// the others; every member's keyring follows, and no member is ever suspected.
#[test]
fn key_rotation_across_five_nodes_never_marks_a_member_down() {
    if !require_root("rotation") {
        return;
    }
    let mut c = Cluster::simple("rotation", 5);
    c.wait_converged(5, Duration::from_secs(15));

    let watching = Arc::new(AtomicBool::new(true));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let sockets: Vec<_> = c.nodes.iter().map(|n| n.socket.clone()).collect();
    let watcher = {
        let (watching, bad) = (watching.clone(), bad.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                for s in &sockets {
                    let out = routingctl(s, &["-o", "json", "members"]);
                    if let Ok(v) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
                        for m in v.iter().filter(|m| m["state"] != "alive") {
                            bad.lock().unwrap().push(format!(
                                "{} sees {} {}",
                                s.display(),
                                m["name"],
                                m["state"]
                            ));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let old = std::fs::read_to_string(&c.keyring)
        .unwrap()
        .trim()
        .to_string();
    let new = MeshKey::generate();
    // Each step is asked of one member, which applies it and asks the four others.
    let step = |asked: usize, args: &[&str], want: &[(&str, bool)]| {
        let mut argv = vec!["-o", "json"];
        argv.extend_from_slice(args);
        let out = routingctl(&c.nodes[asked].socket, &argv);
        assert!(
            out.status.success(),
            "{args:?} on {}: {}",
            c.nodes[asked].name,
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["members_asked"], 4, "{r}");
        assert_eq!(r["members_applied"], 4, "{r}");
        for n in &c.nodes {
            let out = routingctl(&n.socket, &["-o", "json", "keyring", "list"]);
            let keys: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            let keys: Vec<(&str, bool)> = keys
                .iter()
                .map(|k| {
                    (
                        k["fingerprint"].as_str().unwrap_or_default(),
                        k["primary"].as_bool().unwrap_or_default(),
                    )
                })
                .collect();
            assert_eq!(keys, want, "keyring of {} after {args:?}", n.name);
        }
        // Let gossip run under the new keyring state before the next step.
        std::thread::sleep(Duration::from_secs(2));
    };
    let new_b64 = new.to_base64();
    let new_fp = new.fingerprint();
    let old_fp = MeshKey::from_base64(&old).unwrap().fingerprint();
    let new_file = c.dir.join("new.key");
    std::fs::write(&new_file, format!("{new_b64}\n")).unwrap();
    let new_file = new_file.display().to_string();
    step(
        0,
        &["keyring", "install", "--key-file", &new_file],
        &[(&old_fp, true), (&new_fp, false)],
    );
    step(
        2,
        &["keyring", "use", &new_fp],
        &[(&new_fp, true), (&old_fp, false)],
    );
    step(4, &["keyring", "remove", &old_fp], &[(&new_fp, true)]);
    std::thread::sleep(Duration::from_secs(5));
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "members were marked down during rotation: {:?}",
        &bad[..bad.len().min(5)]
    );

    let keys = routingctl(&c.nodes[0].socket, &["-o", "json", "keyring", "list"]);
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&keys.stdout).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["fingerprint"], new.fingerprint());
    // Removing the primary key is refused with a reason.
    let out = routingctl(
        &c.nodes[0].socket,
        &["keyring", "remove", &new.fingerprint()],
    );
    assert_eq!(out.status.code(), Some(1));
    // The rotated keyring survives a restart: the node rejoins with the new key only.
    c.restart(4);
    let back = wait_until(Duration::from_secs(10), || {
        (0..5).all(|i| c.sees_all_alive(i, 5))
    });
    assert!(
        back,
        "node restarted with the persisted keyring did not rejoin"
    );
    // The old key opens nothing any more.
    assert!(
        Keyring::new(MeshKey::from_base64(&old).unwrap())
            .keys()
            .count()
            == 1
    );
}

#[test]
fn one_blackholed_address_keeps_the_member_alive() {
    if !require_root("blackhole") || !require_program("blackhole", "iptables") {
        return;
    }
    let mut c = Cluster::new("blackhole");
    for i in 1..=3u16 {
        c.add(NodeSpec {
            name: format!("gw{i}"),
            datacenter: format!("dc{i}"),
            bind: format!("0.0.0.0:{}", 7950 + i).parse().unwrap(),
            // Two transits: 127.0.0.x and 127.0.1.x.
            advertise: vec![
                format!("127.0.0.{i}:{}", 7950 + i).parse().unwrap(),
                format!("127.0.1.{i}:{}", 7950 + i).parse().unwrap(),
            ],
            seeds: vec!["127.0.0.1:7951".parse().unwrap()],
        });
    }
    c.wait_converged(3, Duration::from_secs(10));
    // Black-hole gw3's first transit, both ways.
    c.ns.exec_ok(&["iptables", "-A", "INPUT", "-d", "127.0.0.3", "-j", "DROP"]);
    c.ns.exec_ok(&["iptables", "-A", "OUTPUT", "-s", "127.0.0.3", "-j", "DROP"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for i in 0..2 {
            assert_eq!(
                c.state_of(i, "gw3").as_deref(),
                Some("alive"),
                "gw3 lost with one transit black-holed"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // The DROP rules really matched traffic.
    let rules = c.ns.exec_ok(&["iptables", "-L", "INPUT", "-v", "-n", "-x"]);
    let text = String::from_utf8_lossy(&rules.stdout);
    let packets: u64 = text
        .lines()
        .find(|l| l.contains("127.0.0.3"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(packets > 0, "the black hole dropped nothing:\n{text}");
}

#[test]
fn hostile_datagrams_change_nothing_and_are_counted() {
    if !require_root("hostile") {
        return;
    }
    let mut c = Cluster::new("hostile");
    // gw1 announces a relay address owned by the test, which records what the others send
    // it (real sealed SWIM traffic) and forwards it: the recordings are replayed later.
    let relay: SocketAddr = "127.0.0.11:7946".parse().unwrap();
    let gw1: SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (recorded, stop) = (recorded.clone(), stop.clone());
        let path = format!("/run/netns/{}", c.ns.name);
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = UdpSocket::bind(relay).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    recorded.lock().unwrap().push(buf[..n].to_vec());
                    let _ = s.send_to(&buf[..n], gw1);
                }
            }
        });
    }
    for i in 1..=3 {
        let bind: SocketAddr = format!("127.0.0.{i}:7946").parse().unwrap();
        c.add(NodeSpec {
            name: format!("gw{i}"),
            datacenter: "dc1".into(),
            bind,
            advertise: vec![if i == 1 { relay } else { bind }],
            // Direct to gw1: join replies go back to the sender, which must not be the relay.
            seeds: vec![gw1],
        });
    }
    c.wait_converged(3, Duration::from_secs(10));
    let before: Vec<_> = c.members(0).unwrap();
    std::thread::sleep(Duration::from_secs(3)); // recorded datagrams are now older than the duplicate window
    let replays: Vec<Vec<u8>> = recorded.lock().unwrap().clone();
    assert!(
        replays.len() > 10,
        "the relay recorded {} datagrams",
        replays.len()
    );

    let wrong_key = Keyring::new(MeshKey::generate());
    let base = [
        dropped(&c, 0, "malformed"),
        dropped(&c, 0, "unauthenticated"),
        dropped(&c, 0, "replay") + dropped(&c, 0, "duplicate"),
    ];
    // Four attackers with their own source addresses, 2,500 datagrams each, paced so the
    // per-source rate limit lets most through to the checks being tested.
    c.ns.run(move || {
        use rand::RngExt as _;
        let mut rng = rand::rng();
        let socks: Vec<UdpSocket> = (101..=104)
            .map(|i| UdpSocket::bind(format!("127.0.0.{i}:0")).unwrap())
            .collect();
        for n in 0..2500 {
            let len = rng.random_range(0..1400);
            let random: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = socks[0].send_to(&random, gw1);
            let real = &replays[n % replays.len()];
            let cut = rng.random_range(0..real.len());
            let _ = socks[1].send_to(&real[..cut], gw1);
            let now_ms = gatewan_mesh::driver::unix_ms();
            let forged = wrong_key.seal(&random, now_ms, rng.random());
            let _ = socks[2].send_to(&forged, gw1);
            let _ = socks[3].send_to(real, gw1);
            if n % 100 == 99 {
                std::thread::sleep(Duration::from_millis(120));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let after = [
        dropped(&c, 0, "malformed"),
        dropped(&c, 0, "unauthenticated"),
        dropped(&c, 0, "replay") + dropped(&c, 0, "duplicate"),
    ];
    eprintln!("drop counters before {base:?} after {after:?}");
    assert!(
        after[0] - base[0] >= 1000.0,
        "truncated/random datagrams not counted as malformed"
    );
    assert!(
        after[1] - base[1] >= 2000.0,
        "wrong-key datagrams not counted as unauthenticated"
    );
    assert!(after[2] - base[2] >= 2000.0, "replays not counted");
    assert!(c.nodes[0].is_running(), "gw1 died");
    assert_eq!(down_or_suspect(&c, 0), 0.0);
    let now: Vec<_> = c.members(0).unwrap();
    let states = |v: &[serde_json::Value]| {
        let mut s: Vec<(String, String, u64)> = v
            .iter()
            .map(|m| {
                (
                    m["name"].to_string(),
                    m["state"].to_string(),
                    m["generation"].as_u64().unwrap(),
                )
            })
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        states(&before),
        states(&now),
        "membership changed under attack"
    );
}

/// Issue 15: a holder of the mesh keyring, with a signing key of its own, forges a
/// member's NodeRecord and a Network record under that member's node id, with versions
/// above any real one, and pushes them to the other members as anti-entropy would. They
/// are dropped and counted as `forged` (unsigned: `bad_signature`), nobody's view of
/// the victim moves, and a restart does not reopen the first-sight window.
#[test]
fn records_forged_by_a_keyring_holder_are_dropped_counted_and_move_nothing() {
    use bytes::Bytes;
    use gatewan_mesh::MemberKey;
    use gatewan_mesh::store::{encode_record, sign_record};
    use gatewan_proto::v1::{self, mesh_control::Kind, record::Body};
    use prost::Message as _;

    if !require_root("forged_records") {
        return;
    }
    let mut c = Cluster::simple("forged", 3);
    c.wait_converged(3, Duration::from_secs(10));
    // gw2 is the victim; gw1 and gw3 are told lies about it.
    let view = |c: &Cluster, i: usize| -> serde_json::Value {
        c.members(i)
            .unwrap()
            .into_iter()
            .find(|m| m["name"] == "gw2")
            .expect("gw2 listed")
    };
    let before = view(&c, 0);
    let victim: gatewan_mesh::NodeId = before["id"].as_str().unwrap().parse().unwrap();
    let fingerprint = before["key_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 16, "gw2's key pinned by gw1: {before}");
    for i in 0..3 {
        assert_eq!(
            view(&c, i)["key_fingerprint"],
            fingerprint,
            "every member, gw2 included, shows the same key for gw2"
        );
    }
    let log = std::fs::read_to_string(&c.nodes[1].log).unwrap();
    assert!(
        log.contains(&fingerprint) && log.contains(&victim.to_string()),
        "gw2 logs its node id and key fingerprint at start"
    );

    let keyring = gatewan_mesh::keyring_file::load(&c.keyring).unwrap();
    let forger = MemberKey::from_seed(rand::random());
    let lie = |version: u64, body: Body| v1::Record {
        origin: Bytes::copy_from_slice(&victim.0),
        version,
        body: Some(body),
        ..Default::default()
    };
    let node_lie = || {
        Body::Node(v1::NodeRecord {
            id: Bytes::copy_from_slice(&victim.0),
            name: "gw2".into(),
            datacenter: "evil".into(),
            api_address: "forged".into(),
            ..Default::default()
        })
    };
    let network_lie = || {
        Body::Network(v1::Network {
            prefix: "10.66.0.0/16".into(),
            vtep: "192.0.2.66".into(),
            vni: 66,
            ..Default::default()
        })
    };
    let high = u64::MAX / 2;
    let forged: Vec<Bytes> = [lie(high, node_lie()), lie(high, network_lie())]
        .iter()
        .map(|r| sign_record(r, &forger).unwrap().bytes)
        .collect();
    let unsigned = encode_record(&lie(high + 1, node_lie())).unwrap().bytes;
    // A sealed control message, as a member sends it: tag 2 (the core's TAG_CONTROL),
    // then the encoded MeshControl.
    let push = move |records: Vec<Bytes>| {
        let mut payload = vec![2u8];
        payload.extend(
            v1::MeshControl {
                kind: Some(Kind::Records(v1::SyncRecords { records })),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let keyring = keyring.clone();
        move || {
            let s = UdpSocket::bind("127.0.0.50:0").unwrap();
            for to in ["127.0.0.1:7946", "127.0.0.3:7946", "127.0.0.2:7946"] {
                let sealed =
                    keyring.seal(&payload, gatewan_mesh::driver::unix_ms(), rand::random());
                s.send_to(&sealed, to).unwrap();
            }
        }
    };
    c.ns.run(push(forged.clone()));
    c.ns.run(push(vec![unsigned]));
    let counted = wait_until(Duration::from_secs(5), || {
        [0, 2].iter().all(|&i| dropped(&c, i, "forged") >= 2.0)
            && dropped(&c, 1, "forged") >= 2.0
            && (0..3).all(|i| dropped(&c, i, "bad_signature") >= 1.0)
    });
    assert!(
        counted,
        "forged {:?}, bad_signature {:?}",
        (0..3).map(|i| dropped(&c, i, "forged")).collect::<Vec<_>>(),
        (0..3)
            .map(|i| dropped(&c, i, "bad_signature"))
            .collect::<Vec<_>>()
    );
    // Gossip and a push-pull round (every 10 s) have had their chance to spread a lie.
    std::thread::sleep(Duration::from_secs(11));
    for i in [0, 2] {
        let now = view(&c, i);
        assert_eq!(
            now["datacenter"],
            before["datacenter"],
            "gw{} moved: {now}",
            i + 1
        );
        assert_eq!(now["key_fingerprint"], fingerprint);
    }
    assert!(c.sees_all_alive(1, 3), "gw2 itself is undisturbed");
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert_eq!(
        log.matches("dropped a forgery").count(),
        1,
        "logged once per origin per minute"
    );

    // The pin outlives a restart: gw3 comes back with gw2's key already pinned, and the
    // same forgery, pushed again as soon as it is up, is refused.
    let pins = std::fs::read_to_string(c.dir.join("gw3.state/pinned_keys")).unwrap();
    assert!(pins.contains(&victim.to_string()), "{pins}");
    c.restart(2);
    assert!(wait_until(Duration::from_secs(5), || c
        .members(2)
        .is_some()));
    c.ns.run(push(forged));
    assert!(wait_until(Duration::from_secs(5), || dropped(
        &c, 2, "forged"
    ) >= 2.0));
    c.wait_converged(3, Duration::from_secs(10));
    assert_eq!(view(&c, 2)["datacenter"], before["datacenter"]);
    let log = std::fs::read_to_string(&c.nodes[2].log).unwrap();
    let first_sights = log
        .lines()
        .filter(|l| l.contains("pinned a member's signing key") && l.contains(&victim.to_string()))
        .count();
    assert_eq!(
        first_sights, 1,
        "gw2's key was pinned again after the restart"
    );
}

/// Issue 15, revocation: gw1 (its key in everyone's mesh.admins) revokes gw3 with
/// `routingctl members revoke`; gw2 drops gw3's records and refuses it, also after a
/// restart. gw2, not an admin, cannot revoke.
#[test]
fn an_admin_revokes_a_member_and_the_revocation_survives_a_restart() {
    use gatewan_mesh::MemberKey;
    if !require_root("revoke") {
        return;
    }
    let mut c = Cluster::new("revoke");
    // gw1's signing key is made before it starts, so its fingerprint can be configured.
    let admin = MemberKey::from_seed(rand::random());
    let state = c.dir.join("gw1.state");
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .unwrap();
    }
    gatewan_mesh::durable::write_private(&state.join("signing_key"), &admin.seed()).unwrap();
    c.admins = vec![admin.public().fingerprint()];
    let seed: SocketAddr = "127.0.0.1:7946".parse().unwrap();
    for i in 1..=3 {
        let addr: SocketAddr = format!("127.0.0.{i}:7946").parse().unwrap();
        c.add(NodeSpec {
            name: format!("gw{i}"),
            datacenter: "dc1".into(),
            bind: addr,
            advertise: vec![addr],
            seeds: vec![seed],
        });
    }
    c.wait_converged(3, Duration::from_secs(10));
    let find = |c: &Cluster, i: usize, id: &str| -> Option<serde_json::Value> {
        c.members(i)?.into_iter().find(|m| m["id"] == id)
    };
    let gw3 = c
        .members(0)
        .unwrap()
        .into_iter()
        .find(|m| m["name"] == "gw3")
        .unwrap();
    let id = gw3["id"].as_str().unwrap().to_string();
    let gw1 = c
        .members(1)
        .unwrap()
        .into_iter()
        .find(|m| m["name"] == "gw1")
        .unwrap();
    assert_eq!(
        gw1["key_fingerprint"],
        admin.public().fingerprint().as_str(),
        "gw2 shows gw1's key as configured"
    );

    let refused = routingctl(&c.nodes[1].socket, &["members", "revoke", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("mesh.admins"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let ok = routingctl(&c.nodes[0].socket, &["members", "revoke", &id]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let revoked = |c: &Cluster, i: usize| {
        find(c, i, &id).is_some_and(|m| m["revoked"] == true && m["name"] == "")
    };
    assert!(
        wait_until(Duration::from_secs(5), || revoked(&c, 1) && revoked(&c, 0)),
        "gw2 sees {:?}",
        find(&c, 1, &id)
    );
    assert!(wait_until(Duration::from_secs(5), || dropped(
        &c, 1, "revoked"
    ) > 0.0));
    let table = routingctl(&c.nodes[1].socket, &["members"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("revoked"));

    let saved = std::fs::read_to_string(c.dir.join("gw2.state/revocations")).unwrap();
    assert_eq!(
        saved.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "{saved}"
    );
    c.restart(1);
    assert!(wait_until(Duration::from_secs(5), || c
        .members(1)
        .is_some()));
    // Restored at start from state_dir/revocations, before anything is heard.
    let log = std::fs::read_to_string(&c.nodes[1].log).unwrap();
    let applied = log
        .lines()
        .filter(|l| l.contains("member revoked") && l.contains(&id))
        .count();
    assert_eq!(
        applied, 2,
        "once when received, once restored at the restart"
    );
    assert!(
        !log.contains("no longer holds"),
        "the saved revocation was refused"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        find(&c, 1, &id).is_none_or(|m| m["revoked"] == true && m["name"] == ""),
        "gw2 took gw3 back: {:?}",
        find(&c, 1, &id)
    );
}

//! The speaker against FRR bgpd 8.x (run directly, without zebra) in a network
//! namespace: eBGP session with TCP-MD5 (FRR connecting to the speaker's listener), and the type-5 routes FRR shows with their
//! attributes; FRR's own route refresh is answered.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bgpctl::bgp::{PeerSettings, SpeakerSettings};
use common::*;

const BGPD: &str = "/usr/lib/frr/bgpd";
const T: Duration = Duration::from_secs(30);

/// A bgpd with its own config, pid file and vty socket directory.
struct Frr {
    ns_name: String,
    run: PathBuf,
    log: PathBuf,
    pid: Option<i32>,
}

impl Frr {
    fn start(ns: &Netns, dir: &Path, config: &str) -> Frr {
        let run = dir.join("frr");
        std::fs::create_dir_all(&run).expect("frr dir");
        let conf = dir.join("bgpd.conf");
        let log = dir.join("bgpd.log");
        std::fs::write(&conf, config.replace("LOGFILE", &log.display().to_string()))
            .expect("bgpd.conf");
        // -Z: no zebra; -S: stay root (the files are ours); -N: own path space, so several
        // bgpd may run at once; -d: daemonize once the vty socket exists.
        let out = ns
            .cmd(BGPD)
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(run.join("bgpd.pid"))
            .arg("--vty_socket")
            .arg(&run)
            .args(["-N", &ns.name, "-Z", "-S", "-d"])
            .output()
            .expect("run bgpd");
        assert!(
            out.status.success(),
            "bgpd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = std::fs::read_to_string(run.join("bgpd.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Frr {
            ns_name: ns.name.clone(),
            run,
            log,
            pid,
        }
    }

    fn vtysh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "vtysh", "--vty_socket"])
            .arg(&self.run)
            .args(["-c", cmd])
            .output()
            .expect("vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, cmd: &str) -> serde_json::Value {
        let text = self.vtysh(cmd);
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    fn neighbor(&self, addr: &str) -> serde_json::Value {
        self.json(&format!("show bgp neighbors {addr} json"))[addr].clone()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // bgpd -N creates its path space under /var/run/frr.
        let _ = std::fs::remove_dir_all(format!("/var/run/frr/{}", self.ns_name));
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "==== bgpd log tail\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// (RD, prefix, VNI, next hop, AS path, extended communities) of every type-5 path.
fn frr_routes(frr: &Frr) -> Vec<(String, String, u64, String, String, String)> {
    let v = frr.json("show bgp l2vpn evpn route detail type prefix json");
    let mut out = Vec::new();
    let Some(rds) = v.as_object() else {
        return out;
    };
    for (rd, per_rd) in rds {
        let Some(prefixes) = per_rd.as_object() else {
            continue;
        };
        for p in prefixes.values() {
            let ip = p["ip"].as_str().unwrap_or("");
            let len = p["ipLen"].as_u64().unwrap_or(0);
            for paths in p["paths"].as_array().into_iter().flatten() {
                for path in paths.as_array().into_iter().flatten() {
                    // FRR prints the VNI of a VXLAN route (label field) as a string.
                    let vni = path["vni"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(u64::MAX);
                    let nh = path["nexthops"][0]["ip"].as_str().unwrap_or("").to_string();
                    let aspath = path["aspath"]["string"]
                        .as_str()
                        .or_else(|| path["path"].as_str())
                        .unwrap_or("")
                        .to_string();
                    let ec = path["extendedCommunity"]["string"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    out.push((rd.clone(), format!("{ip}/{len}"), vni, nh, aspath, ec));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn frr_md5_session_and_routes() {
    const TEST: &str = "frr_md5_session_and_routes";
    if !ready(TEST, &["vtysh"]) || !have_file(TEST, BGPD) {
        return;
    }
    let pair = Pair::new("frr");
    let frr = Frr::start(
        &pair.b,
        &pair.dir,
        &format!(
            r#"frr defaults datacenter
hostname frr-b
log file LOGFILE debugging
!
router bgp 65001
 bgp router-id 10.0.0.2
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor {A4} remote-as 65000
 neighbor {A4} password s3cret-md5
 neighbor {A4} disable-connected-check
 neighbor {A4} timers 3 9
 neighbor {A4} timers connect 1
 address-family l2vpn evpn
  neighbor {A4} activate
 exit-address-family
!
"#
        ),
    );
    // Passive on a dual-stack listener: FRR connects, the kernel checks the TCP-MD5
    // signature with the key installed for FRR's (IPv4-mapped) address.
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
    peer.password = Some("s3cret-md5".into());
    peer.passive = true;
    let speaker = Speaker::start(
        &pair.a,
        SpeakerSettings {
            listen: Some("[::]:179".parse().unwrap()),
            ..speaker_settings(peer)
        },
    );
    let r1 = route("65000:1", "10.1.0.0/16", 10100, A4, 1);
    let r2 = route("65000:1", "2001:db8:1::/48", 10100, A4, 1);
    let mut r3 = route("65000:2", "10.2.0.0/24", 10200, A4, 2);
    r3.link_bandwidth = Some(1_000_000_000);
    speaker
        .handle()
        .set_advertised(vec![r1.clone(), r2.clone(), r3.clone()]);
    speaker.wait_established(B4, T);
    let ok = wait_until(T, || {
        frr.neighbor(A4)["bgpState"].as_str() == Some("Established")
    });
    assert!(ok, "{}", frr.vtysh("show bgp summary"));

    let rt = "RT:65000:100";
    let want = vec![
        (
            "65000:1".to_string(),
            "10.1.0.0/16".to_string(),
            10100,
            A4.to_string(),
            "65000".to_string(),
            format!("{rt} ET:8 Rmac:02:00:00:00:00:01"),
        ),
        (
            "65000:1".to_string(),
            "2001:db8:1::/48".to_string(),
            10100,
            A4.to_string(),
            "65000".to_string(),
            format!("{rt} ET:8 Rmac:02:00:00:00:00:01"),
        ),
        (
            "65000:2".to_string(),
            "10.2.0.0/24".to_string(),
            10200,
            A4.to_string(),
            "65000".to_string(),
            // FRR shows the link bandwidth in its "LB:AS:bytes/s (rate)" form.
            format!("{rt} ET:8 Rmac:02:00:00:00:00:02 LB:65000:125000000 (1.000 Gbps)"),
        ),
    ];
    let mut got = Vec::new();
    let ok = wait_until(T, || {
        got = frr_routes(&frr);
        got == want
    });
    assert!(
        ok,
        "FRR routes:\n got {got:#?}\nwant {want:#?}\n{}",
        frr.vtysh("show bgp l2vpn evpn route detail type prefix")
    );

    // FRR asks for a route refresh; the answer is the same table again.
    let before = frr.neighbor(A4)["messageStats"]["updatesRecv"]
        .as_u64()
        .unwrap_or(0);
    frr.vtysh(&format!("clear bgp l2vpn evpn {A4} soft in"));
    let ok = wait_until(Duration::from_secs(10), || {
        frr.neighbor(A4)["messageStats"]["updatesRecv"]
            .as_u64()
            .unwrap_or(0)
            >= before + 2
    });
    assert!(ok, "route refresh not answered: {}", frr.neighbor(A4));
    assert_eq!(frr_routes(&frr), want);

    // A withdrawal.
    speaker
        .handle()
        .set_advertised(vec![r1.clone(), r3.clone()]);
    let ok = wait_until(T, || frr_routes(&frr).len() == 2);
    assert!(ok, "{:#?}", frr_routes(&frr));
    assert!(frr_routes(&frr).iter().all(|r| r.1 != "2001:db8:1::/48"));
}

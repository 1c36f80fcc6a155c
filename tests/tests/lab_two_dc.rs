//! The two-dc lab with its gatewans running (lab.run labels): two datacenters × two
//! gatewans × two transits through the lab's userspace WAN emulators, wireguard-go.
//!
//! Checks what only the WAN emulator can do here (the kernel has no netem): latency and
//! jitter measured by the probes against what the emulator applies.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatewan_tests::{bin, require_program, require_root, wait_until};
use lab::{Harness, RunningLab};

const GATEWANS: [&str; 4] = [
    "gatewan01-sg1",
    "gatewan02-sg1",
    "gatewan01-par1",
    "gatewan02-par1",
];

fn tunnels(lab: &RunningLab, node: &str) -> Vec<serde_json::Value> {
    let routingctl = bin("routingctl");
    let Ok(out) = lab.exec(
        node,
        &[
            routingctl.to_str().expect("utf-8 path"),
            "-o",
            "json",
            "tunnels",
        ],
    ) else {
        return Vec::new();
    };
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
}

fn established(lab: &RunningLab, node: &str) -> usize {
    tunnels(lab, node)
        .iter()
        .filter(|t| t["state"] == "Established")
        .count()
}

/// (tunnel id, latency ms, jitter ms) of every lumen tunnel end.
fn lumen_readings(lab: &RunningLab) -> Vec<(String, f64, f64)> {
    let mut v = Vec::new();
    for node in GATEWANS {
        for t in tunnels(lab, node) {
            if t["meta"]["local_transit"] == "lumen" {
                let ms = |k: &str| t["probe"][k].as_f64().unwrap_or(f64::NAN) / 1e6;
                v.push((
                    t["id"].as_str().unwrap_or_default().to_string(),
                    ms("latency_ns"),
                    ms("jitter_ns"),
                ));
            }
        }
    }
    v
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0u32), |(s, n), x| (s + x, n + 1));
    s / f64::from(n.max(1))
}

#[test]
fn wan_emulator_latency_and_jitter_are_measured() {
    if !require_root("wan_emulator_latency_and_jitter_are_measured")
        || !require_program(
            "wan_emulator_latency_and_jitter_are_measured",
            "wireguard-go",
        )
    {
        return;
    }
    // The lab's nodes run `gatewan` from PATH, as a container runs its image's binaries.
    // Set before any thread of this test binary starts a process (it has one test).
    let bin_dir = bin("gatewan").parent().expect("bin dir").to_path_buf();
    let path = std::env::var("PATH").unwrap_or_default();
    // SAFETY: the only test of this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var("PATH", format!("{}:{path}", bin_dir.display())) };

    let topo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lab/topologies/two-dc.clab.yml");
    let lab = Harness::up_named(&topo, "t-wan").expect("lab up");
    let start = Instant::now();
    let up = wait_until(Duration::from_secs(20), || {
        GATEWANS.iter().all(|n| established(&lab, n) == 4)
    });
    let took = start.elapsed();
    assert!(up, "16 tunnel ends not Established within 20 s");
    println!("all 8 tunnels Established at both ends {took:?} after lab up");
    assert!(
        took <= Duration::from_secs(10),
        "tunnels took {took:?} to come up (target 10 s)"
    );

    // Baseline: what wireguard-go, the probes and the emulator add to the delay it
    // applies, measured at the lab's own 5 ms (through the same delay line: with no delay
    // the emulator forwards at once). Baseline and impaired windows alternate, so a change
    // of load on this small machine during the test weighs on both alike.
    let window = Duration::from_secs(5); // probe.window default: 5 × 1 s
    let settle = window + Duration::from_secs(1);
    let base_delay = 10.0;
    let mut baseline = Vec::new();
    let mut readings = Vec::new();
    for _ in 0..2 {
        lab.impair("wan-lumen", &["reset"]).expect("impair reset");
        lab.impair("wan-lumen", &["delay=5ms"])
            .expect("impair 5 ms");
        std::thread::sleep(settle);
        baseline.extend(lumen_readings(&lab));
        lab.impair("wan-lumen", &["delay=20ms", "jitter=5ms"])
            .expect("impair");
        std::thread::sleep(settle);
        readings.extend(lumen_readings(&lab));
        std::thread::sleep(window);
        readings.extend(lumen_readings(&lab));
    }
    // The emulator delays each direction by 20 ms ± 5 ms (uniform): the round trip is
    // 40 ms on average, and consecutive round trips differ by the sum of four independent
    // uniform ±5 ms terms, whose mean absolute value is 14/15 × 5 ms ≈ 4.67 ms.
    let applied_rtt = 40.0;
    let applied_jitter = 14.0 / 15.0 * 5.0;
    let mut ids: Vec<&String> = readings.iter().map(|r| &r.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "four lumen tunnels: {readings:?}");
    for id in ids {
        let mine = || readings.iter().filter(move |r| &r.0 == id);
        let base = mean(baseline.iter().filter(|r| &r.0 == id).map(|r| r.1)) - base_delay;
        let latency = mean(mine().map(|r| r.1)) - base;
        let jitter = mean(mine().map(|r| r.2));
        println!(
            "tunnel {id}: latency {latency:.3} ms over its {base:.3} ms overhead (applied {applied_rtt} ms), jitter {jitter:.3} ms (applied {applied_jitter:.3} ms)"
        );
        assert!(
            (latency - applied_rtt).abs() <= 1.0,
            "tunnel {id}: latency {latency:.3} ms, emulator applies {applied_rtt} ms"
        );
        assert!(
            (jitter - applied_jitter).abs() <= 1.0,
            "tunnel {id}: jitter {jitter:.3} ms, emulator applies {applied_jitter:.3} ms"
        );
    }
    lab.down().expect("lab down");
}

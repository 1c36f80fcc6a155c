//! WAN emulator measured from the outside with ping and iperf3: delay, jitter, loss,
//! duplication, rate limit and zero-impairment throughput. One test so that the
//! measurements do not compete for the CPU with each other.

mod common;

use lab::{Harness, RunningLab};

/// Result of one ping run: per-reply RTTs in ms, loss in %, and the raw output.
struct Ping {
    rtts: Vec<f64>,
    loss: f64,
    text: String,
}

impl Ping {
    fn min(&self) -> f64 {
        self.rtts.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.rtts.iter().copied().fold(0.0, f64::max)
    }
    fn avg(&self) -> f64 {
        self.rtts.iter().sum::<f64>() / self.rtts.len().max(1) as f64
    }
    /// The q-quantile (0..=1) of the samples.
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.rtts.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
    /// Share of samples within [lo, hi].
    fn share_within(&self, lo: f64, hi: f64) -> f64 {
        self.rtts.iter().filter(|r| (lo..=hi).contains(*r)).count() as f64
            / self.rtts.len().max(1) as f64
    }
    fn summary(&self) -> String {
        format!(
            "n={} min={:.3} avg={:.3} max={:.3} loss={}%\n{}",
            self.rtts.len(),
            self.min(),
            self.avg(),
            self.max(),
            self.loss,
            self.text
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

fn ping(lab: &RunningLab, count: u32, interval: &str) -> Ping {
    let c = count.to_string();
    let out = lab
        .exec(
            "a",
            &[
                "ping",
                "-n",
                "-c",
                &c,
                "-i",
                interval,
                "-W",
                "1",
                "10.99.0.2",
            ],
        )
        .expect("ping");
    let text = common::stdout(&out);
    let loss = text
        .split(',')
        .find(|s| s.contains("packet loss"))
        .and_then(|s| s.trim().split('%').next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no loss in {text}"));
    let rtts = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .collect();
    Ping { rtts, loss, text }
}

#[test]
fn impairments_are_accurate() {
    if !common::root_or_skip("impairments_are_accurate") {
        return;
    }
    let _ = lab::realize::down("t-wan");
    let topo = lab::bench::wan_topology("t-wan").expect("topology");
    let lab = Harness::up_topology(topo).expect("up");
    let base = ping(&lab, 20, "0.01");
    assert_eq!(
        base.loss,
        0.0,
        "loss without impairment: {}",
        base.summary()
    );
    let b = base.avg();

    // Delay on one direction only: RTT = delay + base RTT, within ±1 ms. Median and 90th
    // percentile, because on a saturated host the kernel's own softirq work (not the
    // emulator) can add rare multi-millisecond outliers.
    lab.impair("w:eth1", &["delay=20ms"]).expect("impair");
    let p = ping(&lab, 200, "0.01");
    assert_eq!(p.loss, 0.0, "{}", p.summary());
    assert!(p.min() >= 20.0, "faster than the delay: {}", p.summary());
    assert!(
        (p.quantile(0.5) - b - 20.0).abs() <= 1.0,
        "delay 20ms median: {}",
        p.summary()
    );
    assert!(
        p.quantile(0.9) - b - 20.0 <= 1.0,
        "delay 20ms p90: {}",
        p.summary()
    );

    // Jitter: samples within delay ± jitter (+1 ms), visibly spread, median near delay.
    lab.impair("w:eth1", &["delay=20ms", "jitter=5ms"])
        .expect("impair");
    let p = ping(&lab, 200, "0.01");
    assert!(p.min() >= 15.0, "jitter lower bound: {}", p.summary());
    assert!(
        p.share_within(15.0, 26.0) >= 0.95,
        "jitter upper bound: {}",
        p.summary()
    );
    assert!(
        p.max() - p.min() >= 5.0,
        "jitter not visible: {}",
        p.summary()
    );
    assert!(
        (p.quantile(0.5) - 20.0).abs() <= 2.5,
        "jitter median: {}",
        p.summary()
    );

    // Loss over 2,000 packets on one direction: within ±2 points.
    lab.impair("w", &["reset"]).expect("impair");
    lab.impair("w:eth1", &["loss=10%"]).expect("impair");
    let p = ping(&lab, 2000, "0.002");
    assert!((p.loss - 10.0).abs() <= 2.0, "loss 10%: {}", p.summary());

    // Duplication shows up as DUP! replies.
    lab.impair("w", &["reset", "duplicate=50%"])
        .expect("impair");
    let p = ping(&lab, 200, "0.005");
    assert!(p.text.contains("duplicates"), "duplicate: {}", p.summary());

    // Reordering: a share of packets skips the delay and overtakes, none are lost.
    lab.impair("w", &["reset"]).expect("impair");
    lab.impair("w:eth1", &["delay=5ms", "reorder=25%"])
        .expect("impair");
    let p = ping(&lab, 200, "0.005");
    assert_eq!(p.loss, 0.0, "{}", p.summary());
    let fast = p.share_within(0.0, 5.0);
    assert!(
        (0.12..=0.40).contains(&fast),
        "reorder 25%: {fast} fast: {}",
        p.summary()
    );

    // Rate limit: TCP goodput within ±10% of 100 Mbit/s.
    lab.impair("w", &["reset", "rate=100Mbps"]).expect("impair");
    let bps = lab::bench::iperf(lab.topology(), "b", "a", "10.99.0.2", 4, "").expect("iperf3");
    assert!(
        (90e6..=110e6).contains(&bps),
        "rate 100Mbps measured {:.1} Mbit/s",
        bps / 1e6
    );

    // No impairment: at least 1 Gbit/s of TCP through the emulator.
    lab.impair("w", &["reset"]).expect("impair");
    let bps = lab::bench::iperf(lab.topology(), "b", "a", "10.99.0.2", 3, "").expect("iperf3");
    eprintln!("throughput at zero impairment: {:.2} Gbit/s", bps / 1e9);
    assert!(bps >= 1e9, "throughput {:.2} Gbit/s", bps / 1e9);
    let stats = lab.impair("w", &[]).expect("stats");
    eprintln!("{stats}");
    lab.down().expect("down");
}

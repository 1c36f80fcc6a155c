//! Compiles the data plane's fast path (`bpf/fastpath.c`, ADR 0067) to a BPF object that
//! the binary embeds. It needs clang and libbpf's headers (`scripts/bootstrap.sh` installs
//! both); no crate compiles C to BPF.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/fastpath.c";
    println!("cargo:rerun-if-changed={src}");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fastpath.o");
    // The kernel's UAPI headers include <asm/types.h>, which Debian keeps per architecture.
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new("clang")
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang could not compile {src} ({s}); see its messages above"),
        Err(e) => panic!(
            "cannot run clang ({e}): the data plane's fast path is compiled with clang and libbpf's headers; run scripts/bootstrap.sh (or apt-get install clang libbpf-dev)"
        ),
    }
}

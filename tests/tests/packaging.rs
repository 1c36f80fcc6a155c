//! The Debian packages (ADR 0044): `scripts/package.sh` on the binaries the tests use
//! (already built, so no release build here), lintian without errors, and, unpacked into a
//! scratch root, units that `systemd-analyze verify` passes, example configs that the
//! installed binaries' `--check` accepts, man pages that render and completions that know
//! the commands.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gatewan_tests::{bin, require_program};

const TEST: &str = "packaging";
const PACKAGES: [&str; 3] = ["gatewan", "bgpctl", "routingctl"];
const DAEMONS: [&str; 2] = ["gatewan", "bgpctl"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn debian_packages_pass_lintian_and_install_units_and_configs_that_verify() {
    for program in [
        "lintian",
        "systemd-analyze",
        "dpkg-deb",
        "dpkg-shlibdeps",
        "man",
    ] {
        if !require_program(TEST, program) {
            return;
        }
    }
    let bin_dir = bin("gatewan")
        .parent()
        .expect("target/<profile>")
        .to_path_buf();
    for b in PACKAGES {
        bin(b);
    }
    let out_dir = tempfile::tempdir().unwrap();
    // gzip: xz takes some 20 s on the debug binaries, and what is checked here is the same.
    let built = run(Command::new(workspace().join("scripts/package.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out-dir")
        .arg(out_dir.path())
        .args(["--compress", "gzip"]));
    let debs: Vec<PathBuf> = text(&built.stdout).lines().map(PathBuf::from).collect();
    let version = env!("CARGO_PKG_VERSION");
    let arch = text(&run(Command::new("dpkg").arg("--print-architecture")).stdout);
    for (deb, name) in debs.iter().zip(PACKAGES) {
        assert_eq!(
            deb.file_name().unwrap().to_string_lossy(),
            format!("{name}_{version}-1_{}.deb", arch.trim()),
            "package.sh printed {debs:?}"
        );
        assert!(deb.exists(), "{} was not written", deb.display());
    }
    assert_eq!(debs.len(), PACKAGES.len(), "package.sh printed {debs:?}");

    // lintian: every tag printed, errors fail.
    let lint = Command::new("lintian")
        .args(&debs)
        .output()
        .expect("lintian");
    let report = format!("{}{}", text(&lint.stdout), text(&lint.stderr));
    eprintln!("lintian:\n{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty(),
        "lintian errors:\n{}\n\nfull report:\n{report}",
        errors.join("\n")
    );
    assert!(
        lint.status.success(),
        "lintian failed ({}):\n{report}",
        lint.status
    );

    // The packages unpacked into a scratch root, on top of what the base system gives them:
    // systemd's own units (the targets the units are ordered after), /bin/kill (procps) for
    // ExecReload, and the merged /usr of any Debian since 12.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root));
    }
    let units = root.join("usr/lib/systemd/system");
    for d in DAEMONS {
        assert!(
            units.join(format!("{d}.service")).is_file(),
            "{d}.service not installed"
        );
    }
    // -n: the packages' units win over any of the same name on this host.
    run(Command::new("cp")
        .arg("-an")
        .arg("/usr/lib/systemd/system/.")
        .arg(&units));
    for (link, to) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        std::fs::create_dir_all(root.join(to)).unwrap();
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    std::fs::copy(
        std::fs::canonicalize("/bin/kill").expect("/bin/kill (procps)"),
        root.join("usr/bin/kill"),
    )
    .unwrap();

    // Man pages are looked up with man(1) on the host: MANPATH makes it the packages'.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(DAEMONS.map(|d| format!("{d}.service")))
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .expect("systemd-analyze");
    let said = format!("{}{}", text(&verify.stdout), text(&verify.stderr));
    eprintln!("systemd-analyze verify: {}\n{said}", verify.status);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        verify.status
    );

    // The installed example configs: what the units give the daemons (StateDirectory=,
    // RuntimeDirectory=) is where the configs put state and socket, and `--check` accepts
    // them once the mesh keyring is where they name it (an operator's first step).
    let etc = root.join("etc/gatewan");
    let keyring = etc.join("keyring");
    let key = run(Command::new(root.join("usr/bin/gatewan")).arg("keygen"));
    std::fs::write(&keyring, &key.stdout).unwrap();
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
    for d in DAEMONS {
        let unit = std::fs::read_to_string(units.join(format!("{d}.service"))).unwrap();
        let config_path = etc.join(format!("{d}.yaml"));
        let config = std::fs::read_to_string(&config_path).unwrap();
        assert_eq!(
            unit_values(&unit, "ExecStart"),
            [format!("/usr/bin/{d} -c /etc/gatewan/{d}.yaml")]
        );
        let state_dir = unit_values(&unit, "StateDirectory");
        assert_eq!(
            yaml_value(&config, "state_dir"),
            format!("/var/lib/{}", state_dir.join(" ")),
            "{d}: state_dir and the unit's StateDirectory="
        );
        let runtime = unit_values(&unit, "RuntimeDirectory").join(" ");
        let socket = yaml_value(&config, "socket");
        assert!(
            runtime
                .split_whitespace()
                .any(|r| socket.starts_with(&format!("/run/{r}/"))),
            "{d}: api.socket {socket} is not in the unit's RuntimeDirectory={runtime}"
        );
        assert!(
            config.contains("keyring: /etc/gatewan/keyring"),
            "{d}.yaml names another keyring"
        );
        std::fs::write(
            &config_path,
            config.replace("/etc/gatewan/keyring", &keyring.display().to_string()),
        )
        .unwrap();
        let check = run(Command::new(root.join(format!("usr/bin/{d}")))
            .arg("--check")
            .arg("-c")
            .arg(&config_path));
        assert!(
            text(&check.stdout).contains("configuration is valid"),
            "{d} --check: {}",
            text(&check.stdout)
        );
        // A conffile: dpkg keeps the operator's edits on upgrade.
        let deb = &debs[PACKAGES.iter().position(|p| *p == d).unwrap()];
        let conffiles = run(Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"));
        assert_eq!(text(&conffiles.stdout), format!("/etc/gatewan/{d}.yaml\n"));
    }

    // Man pages render without warnings; completions name the commands.
    for name in PACKAGES {
        let page = root.join(format!("usr/share/man/man8/{name}.8.gz"));
        let man = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env_remove("MAN_KEEP_FORMATTING"));
        let rendered = text(&man.stdout);
        assert!(
            rendered.contains("NAME") && rendered.contains(name),
            "{}: {rendered}",
            page.display()
        );
        assert!(
            man.stderr.is_empty(),
            "{}: {}",
            page.display(),
            text(&man.stderr)
        );
        let word = match name {
            "gatewan" => "keygen",
            "bgpctl" => "check",
            _ => "members",
        };
        for path in [
            format!("usr/share/bash-completion/completions/{name}"),
            format!("usr/share/zsh/vendor-completions/_{name}"),
            format!("usr/share/fish/vendor_completions.d/{name}.fish"),
        ] {
            let script =
                std::fs::read_to_string(root.join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(script.contains(word), "{path} does not mention {word}");
            assert!(
                !script.contains("generate"),
                "{path} offers the hidden `generate`"
            );
        }
    }
    let version = run(Command::new(root.join("usr/bin/routingctl")).arg("--version"));
    assert!(text(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// The values of `key=` in a unit file, in order (comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The value of the first `key:` line in a YAML file, comments and quotes removed.
fn yaml_value(yaml: &str, key: &str) -> String {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix(':'))
        .map(|v| {
            v.split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .next()
        .unwrap_or_else(|| panic!("no {key}: in {yaml}"))
}

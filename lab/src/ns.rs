//! Namespaces: creates and persists a node's network namespace (`/run/netns/lab.LAB.NODE`)
//! and mount namespace (bind-mounted under `/run/lab/LAB/ns/NODE`), enters them to spawn
//! processes, and finds and kills whatever still lives in them.
//!
//! Namespaces are created from short-lived threads: `unshare` applies to the calling
//! thread only, so the main thread and its mount table are never touched.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Root of all lab state on the host.
pub const RUN_DIR: &str = "/run/lab";
const NETNS_DIR: &str = "/run/netns";

/// Name of the network namespace of `node` in `lab` (as listed by `ip netns`).
pub fn netns_name(lab: &str, node: &str) -> String {
    format!("lab.{lab}.{node}")
}

/// Prefix shared by every network namespace of `lab`.
pub fn netns_prefix(lab: &str) -> String {
    format!("lab.{lab}.")
}

pub fn netns_path(lab: &str, node: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns_name(lab, node))
}

/// Name of the network namespace that realizes VRF `vrf` of `node`. Node names have no
/// dot, so it cannot collide with a node's; it shares the lab's prefix, so `down` finds
/// it like the others.
pub fn vrf_netns_name(lab: &str, node: &str, vrf: &str) -> String {
    format!("lab.{lab}.{node}.vrf.{vrf}")
}

pub fn vrf_netns_path(lab: &str, node: &str, vrf: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(vrf_netns_name(lab, node, vrf))
}

pub fn lab_dir(lab: &str) -> PathBuf {
    Path::new(RUN_DIR).join(lab)
}

/// The log of `node` (or of a host process of the lab, e.g. its Prometheus).
pub fn log_path(lab: &str, node: &str) -> PathBuf {
    lab_dir(lab).join("logs").join(format!("{node}.log"))
}

pub fn mntns_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("ns")
}

pub fn mntns_path(lab: &str, node: &str) -> PathBuf {
    mntns_dir(lab).join(node)
}

/// Mount points of the calling thread's mount namespace.
pub fn mountpoints(thread_self: bool) -> Vec<PathBuf> {
    let p = if thread_self {
        "/proc/thread-self/mountinfo"
    } else {
        "/proc/self/mountinfo"
    };
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .collect()
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn is_mountpoint(p: &Path) -> bool {
    mountpoints(false).iter().any(|m| m == p)
}

/// Inode of a namespace file, which identifies the namespace.
pub fn ns_inode(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// True if `p` is a bind mount of a namespace (nsfs) rather than a plain file.
pub fn is_ns_mount(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Creates the persistent network namespace `name`; idempotent.
pub fn create_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if is_ns_mount(&path) {
        return Ok(());
    }
    share_netns_dir()?;
    File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let p2 = path.clone();
    std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p2,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind netns to {}", p2.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

/// Makes /run/netns a mount point with shared propagation before a namespace is bound in
/// it, as `ip netns add` does. Were it a plain directory, the first `ip netns add` run on
/// the host while the lab is up would bind /run/netns over itself: the lab's namespace
/// files would then lie under that mount, where `lab down` can neither unmount nor remove
/// them (EBUSY), and the namespaces would outlive the lab.
fn share_netns_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    // EINVAL: not a mount point yet.
    if shared().is_err() {
        mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .context("bind /run/netns onto itself")?;
        shared().context("make /run/netns shared")?;
    }
    Ok(())
}

/// Makes `dir` a private mount point so that namespace files can be bound inside it
/// without propagating into other mount namespaces.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    if !is_mountpoint(dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind {} onto itself", dir.display()))?;
    }
    make_private(dir)
}

/// Stops mounts under `dir` propagating to or from other mount namespaces.
fn make_private(dir: &Path) -> Result<()> {
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .with_context(|| format!("make {} private", dir.display()))?;
    Ok(())
}

/// Mounts a private tmpfs on `dir` (idempotent). Per-node writable layers live there:
/// overlayfs refuses an upper layer on overlayfs, which is what `/run` is in many CI
/// containers.
pub fn ensure_tmpfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    if !is_mountpoint(dir) {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .with_context(|| format!("mount tmpfs on {}", dir.display()))?;
    }
    make_private(dir)
}

/// What goes into a node's mount namespace.
pub struct MountSpec {
    pub netns: PathBuf,
    pub target: PathBuf,
    pub etc_upper: PathBuf,
    pub etc_work: PathBuf,
    pub binds: Vec<(PathBuf, PathBuf, bool)>,
}

fn mnt(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, target, fstype, flags, data).with_context(|| format!("mount {target}"))
}

fn setup_mounts(spec: &MountSpec) -> Result<()> {
    let netns =
        File::open(&spec.netns).with_context(|| format!("open {}", spec.netns.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).context("setns(net)")?;
    // Bind sources are opened now: the tmpfs mounts below may hide them (e.g. /tmp).
    let mut binds = Vec::new();
    for (host, inner, ro) in &spec.binds {
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(host)
            .with_context(|| format!("open bind source {}", host.display()))?;
        binds.push((f, host.clone(), host.is_dir(), inner.clone(), *ro));
    }
    mnt(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    // Namespace files of the host would pin other namespaces from inside this one. The
    // tmpfs holding this node's /etc layer stays: the overlay below needs it.
    let keep = spec.etc_upper.parent().and_then(Path::parent);
    let mut stale: Vec<PathBuf> = mountpoints(true)
        .into_iter()
        .filter(|m| {
            (m.starts_with(NETNS_DIR) && m != Path::new(NETNS_DIR)) || m.starts_with(RUN_DIR)
        })
        .filter(|m| Some(m.as_path()) != keep)
        .collect();
    stale.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in stale {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
    let opts = format!(
        "lowerdir=/etc,upperdir={},workdir={}",
        spec.etc_upper.display(),
        spec.etc_work.display()
    );
    mnt(
        Some("overlay"),
        "/etc",
        Some("overlay"),
        MsFlags::empty(),
        Some(&opts),
    )?;
    // /sys must show this namespace's interfaces (as `ip netns exec` does).
    let _ = umount2("/sys", MntFlags::MNT_DETACH);
    mnt(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None)?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        nosuid,
        Some("mode=755"),
    )?;
    std::fs::create_dir_all("/run/wireguard")?;
    std::fs::create_dir_all("/run/lock")?;
    let var_run = Path::new("/var/run");
    if var_run.is_dir() && !var_run.is_symlink() {
        mnt(Some("/run"), "/var/run", None, MsFlags::MS_BIND, None)?;
    }
    mnt(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        nosuid,
        Some("mode=1777"),
    )?;
    // Upper layers for overlays that create missing bind targets live in the node's
    // own /run tmpfs, so they vanish with the node.
    let ovl_root = Path::new("/run/.lab-overlays");
    for (i, (src, host, is_dir, inner, ro)) in binds.into_iter().enumerate() {
        if !inner.exists() {
            make_target_privately(&inner, is_dir, &ovl_root.join(i.to_string()))?;
        }
        let t = inner.to_string_lossy().to_string();
        let src_path = format!("/proc/thread-self/fd/{}", src.as_raw_fd());
        mount(
            Some(src_path.as_str()),
            inner.as_path(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind {} to {t}", host.display()))?;
        if ro {
            mnt(
                None,
                &t,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }
    Ok(())
}

/// Creates a missing bind target without touching the host's filesystem: the nearest
/// existing ancestor gets a private overlay (upper layer under `ovl`) unless it is
/// already private to the node (/run, /tmp, /etc).
fn make_target_privately(inner: &Path, is_dir: bool, ovl: &Path) -> Result<()> {
    let mut anc = inner.parent();
    while let Some(a) = anc {
        if a.exists() {
            break;
        }
        anc = a.parent();
    }
    let anc = anc.unwrap_or(Path::new("/"));
    let private = ["/run", "/tmp", "/etc"].iter().any(|p| anc.starts_with(p));
    if !private {
        if anc == Path::new("/") {
            bail!("bind target {} would be created in /", inner.display());
        }
        let (upper, work) = (ovl.join("upper"), ovl.join("work"));
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            anc.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            anc,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .with_context(|| format!("overlay on {}", anc.display()))?;
    }
    if is_dir {
        std::fs::create_dir_all(inner)
    } else {
        if let Some(p) = inner.parent() {
            std::fs::create_dir_all(p)?;
        }
        File::create(inner).map(|_| ())
    }
    .with_context(|| format!("create bind target {}", inner.display()))
}

/// Creates the node's mount namespace and binds it to `spec.target`; idempotent.
pub fn create_mntns(spec: MountSpec) -> Result<()> {
    if is_ns_mount(&spec.target) {
        return Ok(());
    }
    std::fs::create_dir_all(&spec.etc_upper)?;
    std::fs::create_dir_all(&spec.etc_work)?;
    File::create(&spec.target).with_context(|| format!("create {}", spec.target.display()))?;
    let (to_main, from_thread) = std::sync::mpsc::channel::<Result<i32>>();
    let (to_thread, from_main) = std::sync::mpsc::channel::<()>();
    let target = spec.target.clone();
    let h = std::thread::spawn(move || {
        let r = unshare_bindable_mntns()
            .and_then(|_| setup_mounts(&spec))
            .map(|_| nix::unistd::gettid().as_raw());
        let ok = r.is_ok();
        let _ = to_main.send(r);
        if ok {
            // Stay alive until the namespace is pinned by the bind mount.
            let _ = from_main.recv();
        }
    });
    let res = match from_thread.recv() {
        Ok(Ok(tid)) => {
            let src = format!("/proc/{}/task/{tid}/ns/mnt", std::process::id());
            mount(
                Some(src.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind mount namespace to {}", target.display()))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow!("mount namespace thread died")),
    };
    let _ = to_thread.send(());
    let _ = h.join();
    res
}

nix::ioctl_read!(ns_get_mntns_id, 0xb7, 5, u64);

/// The id of the calling thread's mount namespace (NS_GET_MNTNS_ID, Linux 6.8 and later);
/// None on a kernel without it.
fn own_mntns_id() -> Option<u64> {
    let f = File::open("/proc/thread-self/ns/mnt").ok()?;
    let mut id = 0u64;
    // SAFETY: NS_GET_MNTNS_ID writes one u64 through the pointer, valid for the call.
    unsafe { ns_get_mntns_id(f.as_raw_fd(), &mut id) }.ok()?;
    Some(id)
}

/// Most ids a CPU draws from the kernel's namespace id counter at a time (the kernel's
/// COOKIE_LOCAL_BATCH), and so the most namespaces one CPU can make before its ids pass
/// every id handed out so far.
const NS_ID_BATCH: usize = 4096;

/// Moves the calling thread into a new mount namespace that the namespace it leaves may
/// bind-mount.
///
/// Against loops, the kernel refuses (EINVAL) to bind a mount namespace's file from a
/// namespace whose id is not smaller. Those ids are not in creation order: each CPU draws
/// them from a shared counter in batches of 4096 (Linux 6.18 here; older kernels number
/// namespaces in order), so a namespace made now on one CPU can have a smaller id than
/// an older one made on another. On the host the lab's namespace is the initial one,
/// with the smallest id, and every bind passes; inside a container or `unshare -m` about
/// half of them failed. So the thread unshares until its new namespace's id is larger:
/// on each CPU it may run on in turn (within a CPU ids grow, and the old namespace's was
/// drawn on one of them), else on one CPU until its batch runs out and the next one is
/// drawn above every id handed out.
fn unshare_bindable_mntns() -> Result<()> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let parent = own_mntns_id();
    let fresh = || -> Result<bool> {
        unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
        Ok(match (parent, own_mntns_id()) {
            (Some(parent), Some(id)) => id > parent,
            _ => true,
        })
    };
    if fresh()? {
        return Ok(());
    }
    let me = Pid::from_raw(0);
    let allowed = sched_getaffinity(me).context("sched_getaffinity")?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|c| allowed.is_set(*c).unwrap_or(false))
        .collect();
    let pin = |cpu: usize| -> Result<()> {
        let mut one = CpuSet::new();
        one.set(cpu).context("CPU set")?;
        sched_setaffinity(me, &one).context("sched_setaffinity")
    };
    let mut done = false;
    for &cpu in &cpus {
        pin(cpu)?;
        if fresh()? {
            done = true;
            break;
        }
    }
    if !done && let Some(&cpu) = cpus.first() {
        pin(cpu)?;
        for _ in 0..=NS_ID_BATCH {
            if fresh()? {
                done = true;
                break;
            }
        }
    }
    sched_setaffinity(me, &allowed).context("sched_setaffinity")?;
    if !done {
        bail!(
            "no new mount namespace got an id above {}, the lab's own: the kernel would refuse to bind it (EINVAL)",
            parent.unwrap_or_default()
        );
    }
    Ok(())
}

/// Makes each `(name, host path)` network namespace visible as `/run/netns/NAME` inside
/// the mount namespace at `mntns` (a node's, whose `/run` is its own tmpfs), so that
/// `ip netns` and FRR's zebra `-n` in the node see those namespaces under those names and
/// none of the host's. Idempotent; a name bound to another namespace (the host's was
/// recreated by a repair) is bound again.
pub fn bind_netns_into(mntns: &Path, entries: &[(String, PathBuf)]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mnt = File::open(mntns).with_context(|| format!("open {}", mntns.display()))?;
    // Opened here, in the host's mount namespace: the node's /run hides these paths.
    let mut sources = Vec::new();
    for (name, host) in entries {
        let f = File::open(host).with_context(|| format!("open {}", host.display()))?;
        let ino = f.metadata()?.ino();
        sources.push((name.clone(), f, ino));
    }
    std::thread::spawn(move || -> Result<()> {
        // setns into a mount namespace needs a thread with its own root and cwd.
        unshare(CloneFlags::CLONE_FS).context("unshare(CLONE_FS)")?;
        setns(&mnt, CloneFlags::CLONE_NEWNS).context("setns(mnt)")?;
        std::fs::create_dir_all(NETNS_DIR)?;
        for (name, f, ino) in &sources {
            let target = Path::new(NETNS_DIR).join(name);
            if is_ns_mount(&target) && ns_inode(&target) == Some(*ino) {
                continue;
            }
            while is_ns_mount(&target) {
                umount2(&target, MntFlags::MNT_DETACH)
                    .with_context(|| format!("unmount stale {}", target.display()))?;
            }
            File::create(&target).with_context(|| format!("create {}", target.display()))?;
            let src = format!("/proc/thread-self/fd/{}", f.as_raw_fd());
            mount(
                Some(src.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind {name} into the node's {NETNS_DIR}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("netns binding thread panicked"))?
}

/// Restores the host's handle `host` of a network namespace that the mount namespace at
/// `mntns` still shows as `/run/netns/NAME` (someone ran `ip netns del` on the host's):
/// the namespace, its devices and the daemons' view of it stay the same, where creating a
/// new one would leave the node's processes on the old one. Returns false when there is
/// nothing to recover.
pub fn recover_netns(mntns: &Path, name: &str, host: &Path) -> Result<bool> {
    if !is_ns_mount(mntns) {
        return Ok(false);
    }
    let mnt = File::open(mntns).with_context(|| format!("open {}", mntns.display()))?;
    let inner = Path::new(NETNS_DIR).join(name);
    let found = std::thread::spawn(move || -> Result<Option<File>> {
        unshare(CloneFlags::CLONE_FS).context("unshare(CLONE_FS)")?;
        setns(&mnt, CloneFlags::CLONE_NEWNS).context("setns(mnt)")?;
        if !is_ns_mount(&inner) {
            return Ok(None);
        }
        Ok(Some(File::open(&inner)?))
    })
    .join()
    .map_err(|_| anyhow!("netns recovery thread panicked"))??;
    let Some(f) = found else {
        return Ok(false);
    };
    std::fs::create_dir_all(NETNS_DIR)?;
    File::create(host).with_context(|| format!("create {}", host.display()))?;
    let src = format!("/proc/self/fd/{}", f.as_raw_fd());
    mount(
        Some(src.as_str()),
        host,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind {}", host.display()))?;
    Ok(true)
}

/// Everything needed to run a command inside a node.
pub struct NodeRef {
    pub netns: PathBuf,
    pub mntns: PathBuf,
}

impl NodeRef {
    pub fn new(lab: &str, node: &str) -> NodeRef {
        NodeRef {
            netns: netns_path(lab, node),
            mntns: mntns_path(lab, node),
        }
    }

    /// Prepares `cmd` to run inside the node's network and mount namespaces.
    pub fn command(&self, cmd: &mut Command) -> Result<()> {
        let net =
            File::open(&self.netns).with_context(|| format!("open {}", self.netns.display()))?;
        let mntf =
            File::open(&self.mntns).with_context(|| format!("open {}", self.mntns.display()))?;
        if !is_ns_mount(&self.mntns) {
            bail!(
                "{} is not a mount namespace (is the lab up?)",
                self.mntns.display()
            );
        }
        let root = CString::new("/").map_err(|e| anyhow!(e))?;
        // SAFETY: the closure runs in the forked child before exec; it only calls
        // async-signal-safe syscalls on file descriptors owned by the captured Files.
        unsafe {
            cmd.pre_exec(move || {
                // A supervisor blocks SIGTERM for sigwait; exec would pass that on.
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0
                    || libc::setns(mntf.as_raw_fd(), libc::CLONE_NEWNS) != 0
                    || libc::chdir(root.as_ptr()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let p = netns.to_path_buf();
    std::thread::spawn(move || {
        let fd = File::open(&p).with_context(|| format!("open {}", p.display()))?;
        setns(&fd, CloneFlags::CLONE_NEWNET).context("setns(net)")?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// PIDs (other than ours) whose network or mount namespace is one of `inodes`.
pub fn pids_in(inodes: &[u64]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        for ns in ["net", "mnt"] {
            if let Some(i) = ns_inode(&e.path().join("ns").join(ns))
                && inodes.contains(&i)
            {
                out.push(pid);
                break;
            }
        }
    }
    out
}

/// Sends SIGTERM, then SIGKILL after `grace`, to every process living in `inodes`.
pub fn kill_all_in(inodes: &[u64], grace: Duration) {
    terminate(|| pids_in(inodes), grace);
}

/// Sends SIGTERM to the processes `find` returns, then SIGKILL to those it still returns
/// after `grace`, until it returns none (at most 1 s more).
pub fn terminate(find: impl Fn() -> Vec<i32>, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pids = find();
    if pids.is_empty() {
        return;
    }
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace && !find().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..50 {
        let left = find();
        if left.is_empty() {
            break;
        }
        for p in left {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Rung 3, the kernel-specific object, on this machine: `traceed
//! build-object` against Debian's linux-headers-6.1.0-*-amd64 (downloaded
//! with apt-get and unpacked with dpkg-deb into tests/vm/cache/kobj, as a
//! fleet operator would prepare objects for hosts without BTF), the object's
//! own properties (no CO-RE relocation, the release recorded), and the
//! loader refusing an object whose release is not the running kernel's.
//! Booting 6.1 with the object is the VM matrix's job.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use traceed_tests::{
    bin, http_get, refusal, refused_start, traceed_hiding, traceed_in, unique, Daemon, DaemonOpts,
    Scratch,
};
use traceed_wire::Status;

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/cache/kobj")
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The newest linux-headers-6.1.0-N-amd64 the mirror has, unpacked with its
/// -common package; returns (headers dir, release). Downloads are kept.
fn headers_61() -> &'static (PathBuf, String) {
    static H: OnceLock<(PathBuf, String)> = OnceLock::new();
    H.get_or_init(|| {
        let list = sh(Command::new("apt-cache").args(["search", "--names-only", "^linux-headers-6\\.1\\.0-[0-9]+-amd64$"]));
        let abi = list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| p.strip_prefix("linux-headers-6.1.0-")?.strip_suffix("-amd64")?.parse::<u32>().ok())
            .max()
            .expect("apt-cache knows no linux-headers-6.1.0-*-amd64 (is the bookworm suite configured?)");
        let release = format!("6.1.0-{abi}-amd64");
        let dir = cache();
        let root = dir.join(format!("root-{release}"));
        let build = root.join(format!("usr/src/linux-headers-{release}"));
        if !build.join("include/generated/utsrelease.h").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let pkgs = [format!("linux-headers-{release}"), format!("linux-headers-6.1.0-{abi}-common")];
            for p in &pkgs {
                let have = std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&format!("{p}_")) && n.ends_with(".deb")
                });
                if !have {
                    sh(Command::new("apt-get").arg("download").arg(p).current_dir(&dir));
                }
            }
            let part = root.with_extension("part");
            let _ = std::fs::remove_dir_all(&part);
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if pkgs.iter().any(|p| n.starts_with(&format!("{p}_"))) {
                    sh(Command::new("dpkg-deb").arg("-x").arg(e.path()).arg(&part));
                }
            }
            std::fs::rename(&part, &root).unwrap();
        }
        // lib/modules/R/build is an absolute link into /usr/src: pass that
        // (as a user would), so build-object has to fix the path up.
        (root.join(format!("lib/modules/{release}/build")), release)
    })
}

/// Build once per test process; returns (object, release, build seconds).
fn object_61() -> &'static (PathBuf, String, f64) {
    static O: OnceLock<(PathBuf, String, f64)> = OnceLock::new();
    O.get_or_init(|| {
        let (headers, release) = headers_61();
        // Under target/tmp: built once per test process, kept by cargo.
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(unique("kobj"))
            .join(format!("{release}.bpf.o"));
        let t0 = std::time::Instant::now();
        let stdout = sh(Command::new(bin("traceed"))
            .arg("build-object")
            .arg("--headers")
            .arg(headers)
            .arg("--output")
            .arg(&out));
        let took = t0.elapsed().as_secs_f64();
        eprintln!("build-object for {release}: {took:.1} s: {stdout}");
        assert!(stdout.contains(release.as_str()), "{stdout}");
        (out, release.clone(), took)
    })
}

/// Section contents, through llvm-objcopy (independent of traceed's own
/// ELF reader).
fn dump_section(obj: &Path, name: &str) -> Option<Vec<u8>> {
    let dir = Scratch::new("sec");
    let out = dir.join("section");
    let ok = Command::new("llvm-objcopy")
        .arg(format!("--dump-section={name}={}", out.display()))
        .arg(obj)
        .arg(dir.join("copy"))
        .output()
        .unwrap()
        .status
        .success();
    ok.then(|| std::fs::read(&out).unwrap())
}

#[test]
fn object_for_debian_61_has_no_core_relocations_and_records_its_release() {
    let (obj, release, took) = object_61();
    assert!(*took < 120.0, "build took {took} s");
    let rec = dump_section(obj, ".traceed.release").expect("no .traceed.release section");
    assert_eq!(
        String::from_utf8_lossy(&rec).trim_end_matches('\0'),
        release
    );
    let t = dump_section(obj, ".traceed.transport").expect("no .traceed.transport");
    assert_eq!(
        String::from_utf8_lossy(&t).trim_end_matches('\0'),
        "ringbuf"
    );
    // .BTF.ext header: magic, version, flags, hdr_len, then
    // func_info/line_info/core_relo (off, len) pairs.
    if let Some(ext) = dump_section(obj, ".BTF.ext") {
        let u32_at = |o: usize| u32::from_le_bytes(ext[o..o + 4].try_into().unwrap());
        assert_eq!(&ext[..2], &0xeb9fu16.to_le_bytes());
        let hdr_len = u32_at(4);
        if hdr_len >= 32 {
            assert_eq!(u32_at(28), 0, "the kernel object carries CO-RE relocations");
        }
        assert!(u32_at(12) > 0, "func_info expected (built with -g)");
    }
    // The CO-RE object, for contrast, is full of them: the check can fail.
    let programs = sh(Command::new("llvm-objdump").arg("-h").arg(obj));
    for sec in [
        "raw_tracepoint/sched_process_exec",
        "tracepoint/syscalls/sys_exit_openat",
        ".maps",
    ] {
        assert!(programs.contains(sec), "{sec} missing:\n{programs}");
    }
}

#[test]
fn missing_headers_name_the_package() {
    let out = Command::new(bin("traceed"))
        .args(["build-object", "--headers", "/nonexistent/headers"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install linux-headers-"), "{err}");
    // Missing compilers: the message names the Debian package.
    let out = Command::new(bin("traceed"))
        .args(["build-object", "--headers"])
        .arg(&headers_61().0)
        .env("LLC", "/nonexistent/llc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install llvm"), "{err}");
}

fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// The 6.1 object placed where traceed looks for this kernel's: the release
/// it records decides, not its name.
fn state_with_object() -> Scratch {
    let (obj, _, _) = object_61();
    let dir = Scratch::new("k");
    std::fs::create_dir_all(dir.join("objects")).unwrap();
    std::fs::copy(
        obj,
        dir.join("objects")
            .join(format!("{}.bpf.o", running_release())),
    )
    .unwrap();
    dir
}

#[test]
fn object_of_another_release_is_refused() {
    let (_, release, _) = object_61();
    let running = running_release();
    assert_ne!(
        &running, release,
        "this test needs a kernel other than {release}"
    );
    let dir = state_with_object();
    // Forced: traceed refuses to start and says why.
    let err = refused_start(traceed_in(&dir, false, &["--mode", "kernel"]));
    assert!(
        err.contains("kernel-object")
            && err.contains(&format!(
                "built for kernel {release}, but this kernel is {running}"
            )),
        "{err}"
    );

    // Auto, BTF hidden: rung 3 refused with the reason, the fallback runs.
    let d = Daemon::start_with(DaemonOpts {
        hide_btf: true,
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    });
    let (code, body) = http_get(&d.socket, "/v1/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let s: Status = serde_json::from_str(&body).unwrap();
    assert_eq!(s.rung, "fallback");
    assert!(s.kernel_object.is_none());
    let r = refusal(&s, "kernel-object");
    assert!(r.contains(&format!("built for kernel {release}")), "{r}");
    let text = Command::new(bin("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("not kernel-object:"), "{text}");
}

/// The object loads and attaches on a real kernel (the verifier accepts
/// every program), and the start-up self-check catches what it reads with
/// 6.1's offsets on this other kernel: the loader's last line of defence
/// when the release check is bypassed (TRACEED_TEST_ANY_RELEASE).
#[test]
fn object_of_another_layout_is_caught_by_the_self_check() {
    let dir = state_with_object();
    let mut cmd = traceed_in(&dir, false, &["--mode", "kernel"]);
    cmd.env("TRACEED_TEST_ANY_RELEASE", "1");
    let err = refused_start(cmd);
    assert!(
        err.contains("kernel-object") && err.contains("self-check"),
        "{err}"
    );
}

#[test]
fn no_headers_for_the_running_kernel_is_a_clear_refusal() {
    // Runs on every host, headers installed or not: traceed runs where
    // the header trees (/lib/modules/R/build) and installed objects are
    // hidden, which is exactly a host without them.
    let running = running_release();
    let dir = Scratch::new("n");
    let mut cmd = traceed_hiding(&["/lib/modules", "/usr/lib/traceed/objects"]);
    cmd.args(["--config", "/dev/null", "--mode", "kernel"])
        .arg("--state-dir")
        .arg(&dir)
        .arg("--socket")
        .arg(dir.join("s.sock"));
    let err = refused_start(cmd);
    assert!(
        err.contains(&format!("no {running}.bpf.o in /usr/lib/traceed/objects"))
            && err.contains(&format!("apt-get install linux-headers-{running}")),
        "{err}"
    );
}

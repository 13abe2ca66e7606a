//! The portability ladder on the real kernel: rung 1 (kernel BTF), rung 2
//! (external BTF, with the kernel's own hidden), the fallback object, both
//! transports, and refusal of BTF that does not describe this kernel.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use traceed_tests::{
    http_get, refusal, refused_start, traceed_in, unique, Daemon, DaemonOpts, Program, Scratch,
};
use traceed_wire::Status;

fn status(d: &Daemon) -> Status {
    let (code, body) = http_get(&d.socket, "/v1/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn start(hide_btf: bool, args: &[&str]) -> Daemon {
    Daemon::start_with(DaemonOpts {
        hide_btf,
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// A copy of the kernel's BTF named `name`, in a directory removed with
/// the returned guard.
fn btf_copy(name: &str) -> (Scratch, PathBuf) {
    let dir = Scratch::new("btf");
    let p = dir.join(name);
    std::fs::copy("/sys/kernel/btf/vmlinux", &p).unwrap();
    (dir, p)
}

fn mnt_ns_of_self() -> u32 {
    let l = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let s = l.to_str().unwrap();
    s.trim_start_matches("mnt:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

/// exec, open and connect with known ground truth; `full` = the rung reads
/// kernel structs (ppid and namespaces exact), else the fallback's view.
fn ground_truth(d: &Daemon, fidelity: &str, full: bool) {
    let prog = Program::new("lad");
    let marker = format!("--m={}", prog.name);
    let pid = prog.run(&[&marker]);
    let e = d.wait_for(&["--kind", "exec", "--comm", &prog.name], |e| {
        e.pid == Some(pid)
    });
    assert_eq!(e.fidelity, fidelity);
    assert_eq!(e.uid, Some(0));
    assert_eq!(
        e.args["argv"],
        serde_json::json!([prog.path.to_str().unwrap(), marker])
    );
    assert_eq!(e.args["filename"], prog.path.to_str().unwrap());
    if full {
        assert_eq!(e.ppid, Some(std::process::id()));
        assert_eq!(e.mnt_ns, Some(mnt_ns_of_self()));
        assert_eq!(e.ns_pid, Some(pid));
    } else {
        assert!(
            e.ppid.is_none() || e.ppid == Some(std::process::id()),
            "ppid right or null: {:?}",
            e.ppid
        );
        assert_eq!(e.mnt_ns, None, "the fallback cannot know namespaces");
        assert_eq!(e.pid_ns, None);
        assert_eq!(e.ns_pid, None);
    }

    let path = std::env::temp_dir().join(unique("ladopen"));
    let _ = std::fs::File::open(&path);
    let me = std::process::id().to_string();
    let o = d.wait_for(&["--kind", "open", "--pid", &me], |e| {
        e.args["path"] == path.to_str().unwrap()
    });
    assert_eq!(o.fidelity, fidelity);
    assert_eq!(o.retval, Some(-2));

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut s, _) = l.accept().unwrap();
    c.write_all(b"y").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let c = d.wait_for(&["--kind", "connect", "--pid", &me], |e| {
        e.args["port"] == port
    });
    assert_eq!(c.args["addr"], "127.0.0.1");
    assert_eq!(c.args["family"], "inet");
    assert_eq!(c.fidelity, fidelity);
}

#[test]
fn rung1_kernel_btf_both_transports() {
    for transport in ["ringbuf", "perf"] {
        let d = start(false, &["--transport", transport]);
        let s = status(&d);
        assert_eq!(s.rung, "core-kernel-btf");
        assert_eq!(s.transport, transport);
        ground_truth(&d, "core", true);
    }
}

#[test]
fn rung2_external_btf_when_sysfs_btf_is_hidden() {
    let (_dir, btf) = btf_copy("vmlinux");
    let d = start(true, &["--btf", btf.to_str().unwrap()]);
    let s = status(&d);
    assert_eq!(s.rung, "core-external-btf");
    assert_eq!(s.btf_source.as_deref(), btf.to_str());
    let r1 = refusal(&s, "core-kernel-btf");
    assert!(r1.contains("/sys/kernel/btf/vmlinux"), "{}", r1);
    ground_truth(&d, "core", true);
    let out = d.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("core-external-btf") && text.contains("not core-kernel-btf"),
        "{text}"
    );
}

#[test]
fn fallback_when_no_btf_at_all_both_transports() {
    for transport in ["ringbuf", "perf"] {
        let d = start(true, &["--transport", transport]);
        let s = status(&d);
        assert_eq!(s.rung, "fallback", "{:?}", s.refused);
        assert_eq!(s.transport, transport);
        assert!(s.refused.iter().any(|r| r.rung == "core-kernel-btf"));
        assert!(s.refused.iter().any(|r| r.rung == "core-external-btf"));
        ground_truth(&d, "fallback", false);
    }
}

#[test]
fn fallback_forced_on_a_btf_kernel() {
    let d = start(false, &["--mode", "fallback"]);
    assert_eq!(status(&d).rung, "fallback");
    ground_truth(&d, "fallback", false);
}

#[test]
fn corrupt_btf_is_refused() {
    let dir = Scratch::new("bad");
    let bad = dir.join("garbage.btf");
    std::fs::write(&bad, b"this is not BTF at all, just bytes").unwrap();
    let d = start(true, &["--btf", bad.to_str().unwrap()]);
    let s = status(&d);
    assert_eq!(s.rung, "fallback");
    let r2 = refusal(&s, "core-external-btf");
    assert!(r2.contains("garbage.btf"), "{}", r2);
    drop(d);

    // Forced to CO-RE, it refuses to start instead of guessing.
    let err = refused_start(traceed_in(
        &dir,
        true,
        &["--mode", "core", "--btf", bad.to_str().unwrap()],
    ));
    assert!(
        err.contains("garbage.btf") && err.contains("core-external-btf"),
        "{err}"
    );
}

#[test]
fn btf_of_another_layout_is_refused_by_the_self_check() {
    let (_dir, p) = btf_copy("vmlinux-shifted");
    let mut bytes = std::fs::read(&p).unwrap();
    // As if tgid sat 8 bytes further into task_struct (real_parent would
    // not do: the member after it, `parent`, usually holds the same pointer).
    assert!(traceed_tests::btf::shift_member(
        &mut bytes,
        "task_struct",
        "tgid",
        64
    ));
    std::fs::write(&p, bytes).unwrap();
    let d = start(true, &["--btf", p.to_str().unwrap()]);
    let s = status(&d);
    assert_eq!(
        s.rung, "fallback",
        "a BTF with the wrong layout must not be trusted"
    );
    let r2 = refusal(&s, "core-external-btf");
    assert!(r2.contains("self-check"), "{}", r2);
}

#[test]
fn btf_named_for_another_kernel_is_refused() {
    let (_dir, p) = btf_copy("5.10.0-99-amd64.btf");
    let d = start(true, &["--btf", p.to_str().unwrap()]);
    let s = status(&d);
    assert_eq!(s.rung, "fallback");
    let r2 = refusal(&s, "core-external-btf");
    assert!(r2.contains("5.10.0-99-amd64"), "{}", r2);
}

#[test]
fn rung2_from_a_btfhub_tree_with_an_archive() {
    let os = std::fs::read_to_string("/etc/os-release").unwrap();
    let field = |k: &str| {
        os.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{k}="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap()
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();
    let root = Scratch::new("hub");
    let leaf = root
        .join(field("ID"))
        .join(field("VERSION_ID"))
        .join(std::env::consts::ARCH);
    std::fs::create_dir_all(&leaf).unwrap();
    let staging = root.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(
        "/sys/kernel/btf/vmlinux",
        staging.join(format!("{release}.btf")),
    )
    .unwrap();
    let st = std::process::Command::new("tar")
        .arg("-cJf")
        .arg(leaf.join(format!("{release}.btf.tar.xz")))
        .arg("-C")
        .arg(&staging)
        .arg(format!("{release}.btf"))
        .status()
        .unwrap();
    assert!(st.success());
    let d = Daemon::start_with(DaemonOpts {
        hide_btf: true,
        config: Some(format!("btf_dir = \"{}\"\n", root.display())),
        ..Default::default()
    });
    let s = status(&d);
    assert_eq!(s.rung, "core-external-btf", "{:?}", s.refused);
    assert!(s
        .btf_source
        .as_deref()
        .unwrap()
        .ends_with(&format!("{release}.btf")));
    ground_truth(&d, "core", true);
}

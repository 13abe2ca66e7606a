//! The hostile-input corpus: names and paths a process can choose to blur
//! or hide what it did (control characters, newlines, bytes that are not
//! UTF-8, a path at PATH_MAX, a symlink loop, an exchange of two files).
//! Each case runs through the real daemon and is read back through the API
//! (`tracectl -o jsonl`) and `tracectl`'s table: recorded exactly (or
//! flagged truncated where the kernel's 1,023-byte string cap cut it), the
//! rendering decoded back to the original bytes, and no raw control byte
//! on the terminal.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use traceed_tests::{unique, Daemon};
use traceed_wire::bytes::unrender;
use traceed_wire::Event;

fn me() -> String {
    std::process::id().to_string()
}

/// A fresh directory for one case, its name unique (the table marker).
fn case_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("traceed-hostile-{tag}-{}", unique("h")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn join(dir: &std::path::Path, name: &[u8]) -> Vec<u8> {
    [dir.as_os_str().as_bytes(), b"/", name].concat()
}

fn path(b: &[u8]) -> &std::path::Path {
    std::path::Path::new(OsStr::from_bytes(b))
}

/// The bytes an event's string field stands for, through the documented
/// rendering (`args.escaped`).
fn field_bytes(e: &Event, field: &str) -> Option<Vec<u8>> {
    let escaped = e.args.get("escaped") == Some(&serde_json::Value::Bool(true));
    let s = e.args.get(field)?.as_str()?;
    Some(unrender(s, escaped).unwrap_or_else(|x| panic!("{field} of {e:?}: {x}")))
}

/// Our own event of `kind` whose `field` is exactly `want` (as bytes).
fn wait_exact(d: &Daemon, kind: &str, field: &str, want: &[u8]) -> Event {
    d.wait_for(&["--kind", kind, "--pid", &me(), "--since", "5m"], |e| {
        field_bytes(e, field).as_deref() == Some(want)
    })
}

/// `tracectl events` as a table, for our own events of `kind` in `dir`:
/// nothing in it may act on a terminal, and every row of ours is on one
/// line (a name with a newline cannot forge a row).
fn table_is_inert(d: &Daemon, kind: &str, marker: &str, rows: usize) -> String {
    let out = d.ctl(&[
        "events",
        "-o",
        "table",
        "--kind",
        kind,
        "--pid",
        &me(),
        "--since",
        "5m",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("table output is UTF-8");
    for c in text.chars() {
        let acts = (c.is_control() && c != '\n')
            || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
        assert!(!acts, "raw {c:?} in the table:\n{text}");
    }
    let ours = text.lines().filter(|l| l.contains(marker)).count();
    assert_eq!(ours, rows, "rows naming {marker}:\n{text}");
    text
}

#[test]
fn names_with_control_characters_newlines_and_invalid_utf8() {
    let d = Daemon::start();
    let dir = case_dir("names");
    let marker = dir.file_name().unwrap().to_str().unwrap().to_string();
    let names: [&[u8]; 6] = [
        b"new\nline",
        b"esc\x1b[2J\x1b]0;pwned\x07\rcr",
        "bidi\u{202e}fdp.exe".as_bytes(),
        b"bad\xff\xfe-\xc3(",
        // The same characters as the rendering of 0xff: must stay apart.
        b"lit\\xff",
        b"lit\xff",
    ];
    for n in names {
        std::fs::File::create(path(&join(&dir, n))).unwrap();
    }
    // A comm that is not UTF-8 and holds control characters (PR_SET_NAME
    // keeps 15 bytes).
    let comm: &[u8] = b"c\xff\x1b[7m\n\\x";
    let by_comm = join(&dir, b"by-comm");
    {
        let (comm, p) = (comm.to_vec(), by_comm.clone());
        std::thread::spawn(move || {
            let name = std::ffi::CString::new(comm).unwrap();
            // SAFETY: PR_SET_NAME reads a NUL-terminated string.
            assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
            std::fs::File::create(path(&p)).unwrap();
        })
        .join()
        .unwrap();
    }
    let e = wait_exact(&d, "open", "path", &by_comm);
    assert_eq!(e.args["escaped"], true, "{e:?}");
    let c = unrender(e.comm.as_deref().unwrap(), true).unwrap();
    assert_eq!(c, comm);
    let mut seen = Vec::new();
    for n in names {
        let full = join(&dir, n);
        let e = wait_exact(&d, "open", "path", &full);
        let escaped = e.args.get("escaped").is_some();
        assert_eq!(
            escaped,
            std::str::from_utf8(&full).is_err(),
            "escaped only when the bytes are not UTF-8: {e:?}"
        );
        seen.push((e.args["path"].as_str().unwrap().to_string(), escaped));
    }
    // Distinct bytes, distinct (rendering, flag).
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // The rendering is what filters see: the path as the API printed it
    // finds the event again.
    let bad = &seen[3].0;
    let found = d.events(&["--kind", "open", "--pid", &me(), "--since", "5m"]);
    assert!(found.iter().any(|e| e.args["path"] == bad.as_str()));
    let text = table_is_inert(&d, "open", &marker, names.len() + 1);
    assert!(text.contains("\\\\xff"), "{text}");
    assert!(text.contains("\\u{202e}"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_path_at_path_max_is_cut_at_the_kernel_cap_and_flagged() {
    let d = Daemon::start();
    let dir = case_dir("long");
    let marker = dir.file_name().unwrap().to_str().unwrap().to_string();
    // PATH_MAX is 4096 with the NUL: the longest path open(2) takes is
    // 4095 bytes, made of nested 200-byte directories.
    let mut p = dir.as_os_str().as_bytes().to_vec();
    while p.len() + 1 + 200 < 4095 {
        p.push(b'/');
        p.extend(std::iter::repeat_n(b'd', 200));
        std::fs::create_dir(path(&p)).unwrap();
    }
    p.push(b'/');
    p.resize(4095, b'f');
    std::fs::File::create(path(&p)).unwrap();
    // The kernel copies 1,024 bytes of a string (EV_STR_MAX) with its NUL.
    const CAP: usize = 1023;
    let e = wait_exact(&d, "open", "path", &p[..CAP]);
    assert_eq!(e.args["truncated"], true, "{e:?}");
    assert!(e.retval.unwrap() >= 0, "{e:?}");
    table_is_inert(&d, "open", &marker, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_symlink_loop_is_recorded_with_eloop() {
    let d = Daemon::start();
    let dir = case_dir("loop");
    let marker = dir.file_name().unwrap().to_str().unwrap().to_string();
    let a = dir.join("a\nloop");
    let b = dir.join("b");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = std::fs::File::open(&a).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    let e = wait_exact(&d, "open", "path", a.as_os_str().as_bytes());
    assert_eq!(e.retval, Some(-(libc::ELOOP as i64)), "{e:?}");
    table_is_inert(&d, "open", &marker, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rename_exchange_records_both_sides_and_the_flag() {
    let d = Daemon::start();
    let dir = case_dir("xchg");
    let marker = dir.file_name().unwrap().to_str().unwrap().to_string();
    let x = join(&dir, b"x\x1b[1A\nside");
    let y = join(&dir, b"y\xff\\side");
    std::fs::write(path(&x), "x").unwrap();
    std::fs::write(path(&y), "y").unwrap();
    let cx = std::ffi::CString::new(x.clone()).unwrap();
    let cy = std::ffi::CString::new(y.clone()).unwrap();
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cx.as_ptr(),
            libc::AT_FDCWD,
            cy.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(std::fs::read(path(&x)).unwrap(), b"y", "not exchanged");
    let e = wait_exact(&d, "rename", "old_path", &x);
    assert_eq!(field_bytes(&e, "new_path").as_deref(), Some(y.as_slice()));
    assert_eq!(e.args["flags"], libc::RENAME_EXCHANGE, "{e:?}");
    assert_eq!(e.args["escaped"], true);
    assert_eq!(e.retval, Some(0));
    table_is_inert(&d, "rename", &marker, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_executable_argv_and_exe_that_are_not_utf8() {
    let d = Daemon::start();
    let dir = case_dir("exec");
    let marker = dir.file_name().unwrap().to_str().unwrap().to_string();
    let exe = join(&dir, b"tru\xffe\\x\nbin");
    std::fs::copy("/bin/true", path(&exe)).unwrap();
    let arg: &[u8] = b"arg\xfe\\x41\x1b";
    let mut c = traceed_tests::spawn_fresh(
        std::process::Command::new(path(&exe)).arg(OsStr::from_bytes(arg)),
    );
    let pid = c.id();
    c.wait().unwrap();
    let e = d.wait_for(&["--kind", "exec", "--pid", &pid.to_string()], |_| true);
    assert_eq!(e.args["escaped"], true, "{e:?}");
    assert_eq!(field_bytes(&e, "filename").as_deref(), Some(exe.as_slice()));
    let argv: Vec<Vec<u8>> = e.args["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| unrender(a.as_str().unwrap(), true).unwrap())
        .collect();
    assert_eq!(argv, vec![exe.clone(), arg.to_vec()]);
    assert_eq!(unrender(e.exe.as_deref().unwrap(), true).unwrap(), exe);
    let out = d.ctl(&[
        "events",
        "-o",
        "table",
        "--kind",
        "exec",
        "--pid",
        &pid.to_string(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(&marker)).count(),
        1,
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

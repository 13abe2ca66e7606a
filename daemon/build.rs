//! Compiles the kernel side (daemon-ebpf/*.bpf.c) with clang into the objects
//! that traceed embeds, and measures `struct event_header` with the host C
//! compiler so the Rust decoder can assert it reads the same layout.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (output name, main source, extra clang flags)
const OBJECTS: &[(&str, &str, &[&str])] = &[
    ("traceed.bpf.o", "src/traceed.bpf.c", &["-DCORE"]),
    (
        "traceed-perf.bpf.o",
        "src/traceed.bpf.c",
        &["-DCORE", "-DTRACEED_PERF"],
    ),
    (
        "fallback.bpf.o",
        "src/fallback.bpf.c",
        &["-DTRACEED_FALLBACK"],
    ),
    (
        "fallback-perf.bpf.o",
        "src/fallback.bpf.c",
        &["-DTRACEED_FALLBACK", "-DTRACEED_PERF"],
    ),
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest.join("../daemon-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", ebpf.display());
    // sqlx::migrate! embeds migrations/ at compile time; a new file there
    // must rebuild the crate (sqlx's documented build.rs line).
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    if Command::new(&clang).arg("--version").output().is_err() {
        panic!(
            "cannot run `{clang}`: the eBPF programs are C compiled by clang. \
             Install it with `apt-get install clang libbpf-dev` (or set CLANG=/path/to/clang)"
        );
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!(
            "libbpf headers missing (/usr/include/bpf/bpf_helpers.h): `apt-get install libbpf-dev`"
        );
    }

    for (name, src, flags) in OBJECTS {
        let obj = out.join(name);
        let status = Command::new(&clang)
            .args([
                "-g",
                "-O2",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Werror",
            ])
            .args(*flags)
            .arg("-I")
            .arg(ebpf.join("include"))
            .arg("-c")
            .arg(ebpf.join(src))
            .arg("-o")
            .arg(&obj)
            .status()
            .expect("spawn clang");
        assert!(status.success(), "clang failed to compile {src} ({name})");
        // DWARF is only needed to produce .BTF; aya reads .BTF/.BTF.ext.
        let _ = Command::new("llvm-strip").arg("-g").arg(&obj).status();
    }

    write_layout(&ebpf.join("include"), &out);
    write_syscall_table(&out);
}

/// x86_64 syscall names by number, from the uapi header (linux-libc-dev),
/// for the generic `[events] syscalls` path.
fn write_syscall_table(out: &Path) {
    const HDR: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    println!("cargo:rerun-if-changed={HDR}");
    let text = std::fs::read_to_string(HDR)
        .unwrap_or_else(|e| panic!("{HDR}: {e}; `apt-get install linux-libc-dev`"));
    let mut rows = String::from("pub const SYSCALLS: &[(&str, u32)] = &[\n");
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (it.next(), it.next(), it.next()) {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<u32>()) {
                rows.push_str(&format!("    (\"{name}\", {nr}),\n"));
            }
        }
    }
    rows.push_str("];\n");
    std::fs::write(out.join("syscalls.rs"), rows).unwrap();
}

/// Compile and run a host program printing the offsets of every header
/// field, and turn them into Rust constants.
fn write_layout(include: &Path, out: &Path) {
    const FIELDS: &[&str] = &[
        "ts_ns",
        "cgroup_id",
        "retval",
        "kind",
        "flags",
        "pid",
        "tid",
        "ppid",
        "uid",
        "gid",
        "ns_pid",
        "mnt_ns",
        "pid_ns",
        "comm",
        "args",
        "str_len",
        "data_len",
    ];
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"events.h\"\nint main(void){\n",
    );
    c.push_str(
        "printf(\"pub const HEADER_SIZE: usize = %zu;\\n\", sizeof(struct event_header));\n",
    );
    c.push_str("printf(\"pub const EVENT_SIZE: usize = %zu;\\n\", sizeof(struct event));\n");
    for f in FIELDS {
        c.push_str(&format!(
            "printf(\"pub const OFF_{}: usize = %zu;\\n\", offsetof(struct event_header, {f}));\n",
            f.to_uppercase()
        ));
    }
    c.push_str("return 0;}\n");
    let src = out.join("layout.c");
    let bin = out.join("layout");
    std::fs::write(&src, c).unwrap();
    let cc = env::var("HOST_CC").unwrap_or_else(|_| "cc".into());
    let ok = Command::new(&cc)
        .arg("-I")
        .arg(include)
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .expect("spawn host C compiler (apt-get install gcc)")
        .success();
    assert!(ok, "host compile of events.h layout probe failed");
    let o = Command::new(&bin).output().expect("run layout probe");
    std::fs::write(out.join("layout.rs"), o.stdout).unwrap();
}

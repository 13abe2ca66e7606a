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

/// Compile and run a host program that prints the record contract of
/// events.h (kinds, flags, variants, slots, every header offset) as plain
/// lines, and turn them into Rust (`OUT_DIR/layout.rs`, included by
/// `pipeline::contract`). The C header is the one definition; nothing on
/// the Rust side restates a number.
fn write_layout(include: &Path, out: &Path) {
    let c = r#"#include <stdio.h>
#include <stddef.h>
#include "events.h"
int main(void)
{
	printf("size HEADER_SIZE %zu\n", sizeof(struct event_header));
	printf("size EVENT_SIZE %zu\n", sizeof(struct event));
	printf("size TASK_COMM_LEN %d\n", TASK_COMM_LEN);
	printf("size EV_NUM_ARGS %d\n", EV_NUM_ARGS);
	printf("size EV_NUM_STRS %d\n", EV_NUM_STRS);
	printf("size EV_DATA_MAX %d\n", EV_DATA_MAX);
	printf("size EV_ARGV_CAP %d\n", EV_ARGV_CAP);
	printf("size EV_ARG_MAX %d\n", EV_ARG_MAX);
	printf("size EV_BUF_SIZE %d\n", EV_BUF_SIZE);
#define OFF(f) printf("off %s %zu %zu\n", #f, offsetof(struct event_header, f), sizeof(((struct event_header *)0)->f));
	TRACEED_HEADER_FIELDS(OFF)
#define KIND(name, num, wire) printf("kind %s %d %s\n", #name, num, wire);
	TRACEED_KINDS(KIND)
#define FLAG(name, bit) printf("flag %s %u\n", #name, (unsigned)(name));
	TRACEED_FLAGS(FLAG)
#define VARIANT(name, num) printf("variant %s %d\n", #name, num);
	TRACEED_VARIANTS(VARIANT)
#define SLOT(name, num) printf("slot %s %d\n", #name, num);
	TRACEED_ARG_SLOTS(SLOT)
	TRACEED_STR_SLOTS(SLOT)
	printf("value EXIT_STATUS_KNOWN %d\n", EXIT_STATUS_KNOWN);
	printf("value ARGV_SIZE_KNOWN %d\n", ARGV_SIZE_KNOWN);
	return 0;
}
"#;
    let src = out.join("layout.c");
    let bin = out.join("layout");
    std::fs::write(&src, c).unwrap();
    let cc = env::var("HOST_CC").unwrap_or_else(|_| "cc".into());
    let ok = Command::new(&cc)
        .args(["-Wall", "-Werror", "-I"])
        .arg(include)
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .expect("spawn host C compiler (apt-get install gcc)")
        .success();
    assert!(ok, "host compile of the events.h contract probe failed");
    let o = Command::new(&bin).output().expect("run layout probe");
    assert!(o.status.success(), "events.h contract probe failed");
    let text = String::from_utf8(o.stdout).expect("probe output is UTF-8");
    std::fs::write(out.join("layout.rs"), contract_rs(&text)).unwrap();
}

/// "MODULE_LOAD" -> "ModuleLoad"
fn camel(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
            })
        })
        .collect()
}

fn contract_rs(probe: &str) -> String {
    let mut rs =
        String::from("// Generated by daemon/build.rs from daemon-ebpf/include/events.h.\n");
    let mut kinds = Vec::new();
    let mut fields = Vec::new();
    for line in probe.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["size", name, n] => rs.push_str(&format!("pub const {name}: usize = {n};\n")),
            ["off", field, off, size] => {
                let up = field.to_uppercase();
                rs.push_str(&format!("pub const OFF_{up}: usize = {off};\n"));
                rs.push_str(&format!("pub const SIZE_{up}: usize = {size};\n"));
                fields.push(field.to_string());
            }
            ["kind", name, n, wire] => {
                rs.push_str(&format!("pub const EK_{name}: u32 = {n};\n"));
                kinds.push((camel(name), n.to_string(), wire.to_string()));
            }
            ["flag", name, v] | ["variant", name, v] => {
                rs.push_str(&format!("pub const {name}: u32 = {v};\n"))
            }
            ["slot", name, n] => rs.push_str(&format!("pub const {name}: usize = {n};\n")),
            ["value", name, v] => rs.push_str(&format!("pub const {name}: u64 = {v};\n")),
            _ => panic!("unexpected line from the events.h probe: {line:?}"),
        }
    }
    rs.push_str(&format!(
        "/// Every field of `struct event_header`, in order.\npub const HEADER_FIELDS: &[&str] = &{fields:?};\n"
    ));
    rs.push_str(
        "/// `enum event_kind`: a kind added in events.h fails the build until\n\
         /// the decoder handles it (its matches are exhaustive).\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\n#[repr(u32)]\npub enum Kind {\n",
    );
    for (name, n, _) in &kinds {
        rs.push_str(&format!("    {name} = {n},\n"));
    }
    rs.push_str("}\n\nimpl Kind {\n    pub const ALL: &[Kind] = &[\n");
    for (name, _, _) in &kinds {
        rs.push_str(&format!("        Kind::{name},\n"));
    }
    rs.push_str(
        "    ];\n\n    pub fn from_raw(n: u32) -> Option<Kind> {\n        Some(match n {\n",
    );
    for (name, n, _) in &kinds {
        rs.push_str(&format!("            {n} => Kind::{name},\n"));
    }
    rs.push_str("            _ => return None,\n        })\n    }\n\n    /// The wire name (`Event.kind`).\n    pub fn name(self) -> &'static str {\n        match self {\n");
    for (name, _, wire) in &kinds {
        rs.push_str(&format!("            Kind::{name} => {wire:?},\n"));
    }
    rs.push_str("        }\n    }\n}\n");
    rs
}

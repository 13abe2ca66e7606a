//! The kernel-specific object (rung 3): compiles the embedded C sources
//! without `-DCORE` against one kernel's own headers, so member offsets are
//! those headers' and exact for that release, and reads the release an
//! object records so the loader never runs one built for another kernel.
//!
//! Owns: the embedded sources, header-tree discovery (Debian splits a
//! tree into `-amd64` and `-common` packages), the clang + llc recipe, and
//! the object's `.traceed.release` / `.traceed.transport` sections.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use traceed_wire::KernelObject;

use crate::service::config::Transport;

/// Every file the kernel-specific object is compiled from, written to a
/// temporary tree at build time so `build-object` works on a host that has
/// no copy of the project. libbpf's headers come from the build host
/// (libbpf-dev), so the target host needs only clang, llvm and its headers.
macro_rules! ebpf_file {
    ($p:literal) => {
        (
            $p,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../daemon-ebpf/", $p)),
        )
    };
}
pub const SOURCES: &[(&str, &str)] = &[
    ebpf_file!("include/common.h"),
    ebpf_file!("include/events.h"),
    ebpf_file!("include/kread.h"),
    ebpf_file!("include/missing_definitions.h"),
    ebpf_file!("include/syscalls.h"),
    ebpf_file!("include/task.h"),
    ebpf_file!("include/vmlinux.h"),
    ebpf_file!("src/traceed.bpf.c"),
    ebpf_file!("src/fallback.bpf.c"),
    ebpf_file!("src/fallback_process.bpf.c"),
    ebpf_file!("src/process.bpf.c"),
    ebpf_file!("src/exec_fail.bpf.c"),
    ebpf_file!("src/file.bpf.c"),
    ebpf_file!("src/net.bpf.c"),
    ebpf_file!("src/security.bpf.c"),
    ebpf_file!("src/generic.bpf.c"),
    (
        "include/bpf/bpf_helpers.h",
        include_str!("/usr/include/bpf/bpf_helpers.h"),
    ),
    (
        "include/bpf/bpf_helper_defs.h",
        include_str!("/usr/include/bpf/bpf_helper_defs.h"),
    ),
    (
        "include/bpf/bpf_core_read.h",
        include_str!("/usr/include/bpf/bpf_core_read.h"),
    ),
    (
        "include/bpf/bpf_tracing.h",
        include_str!("/usr/include/bpf/bpf_tracing.h"),
    ),
];

pub const SYSTEM_OBJECTS: &str = "/usr/lib/traceed/objects";
pub const RELEASE_SECTION: &str = ".traceed.release";
pub const TRANSPORT_SECTION: &str = ".traceed.transport";

#[derive(Debug, thiserror::Error)]
pub enum KobjError {
    #[error("cannot run `{tool}` ({err}): building a kernel-specific object needs it; install it with `apt-get install {package}`")]
    MissingTool {
        tool: String,
        package: &'static str,
        err: String,
    },
    #[error("{} has no include/generated/utsrelease.h: not a prepared kernel header tree; install the headers of the kernel with `apt-get install linux-headers-{}` (or pass --headers DIR)", .0.display(), .1)]
    NoHeaders(PathBuf, String),
    #[error("the header tree {} has no kernel sources (include/linux/sched.h) and its companion tree {} was not found (Debian: install the matching linux-headers-*-common package)", .build.display(), .tried)]
    NoSourceTree { build: PathBuf, tried: String },
    #[error("{step} failed for the headers of {release}:\n{stderr}")]
    Compile {
        step: &'static str,
        release: String,
        stderr: String,
    },
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
}

/// A kernel header tree. Debian's `/lib/modules/R/build` (the `-amd64`
/// package) holds only the generated headers and .config; `source` (the
/// `-common` package) the rest. Upstream `make headers_prepare` trees
/// are both at once.
#[derive(Debug)]
pub struct HeaderTree {
    pub build: PathBuf,
    pub source: PathBuf,
    pub release: String,
}

pub fn running_release() -> String {
    super::kernel_release()
}

pub fn default_headers() -> PathBuf {
    PathBuf::from(format!("/lib/modules/{}/build", running_release()))
}

/// An absolute path as it is recorded in an unpacked package (a symlink
/// target, a Makefile include) points at the real root; when the tree was
/// unpacked elsewhere (`dpkg-deb -x pkg.deb DIR`), look for the same path
/// under each ancestor of `near`.
fn reroot(abs: &Path, near: &Path) -> Option<PathBuf> {
    if abs.exists() {
        return Some(abs.to_path_buf());
    }
    let rel = abs.strip_prefix("/").ok()?;
    near.ancestors()
        .skip(1)
        .map(|a| a.join(rel))
        .find(|p| p.exists())
}

/// Resolve `dir` (possibly a dangling absolute symlink such as an unpacked
/// `lib/modules/R/build`) into its build and source trees.
pub fn header_tree(dir: &Path) -> Result<HeaderTree, KobjError> {
    let mut build = dir.to_path_buf();
    if let Ok(target) = std::fs::read_link(dir) {
        let abs = if target.is_absolute() {
            target
        } else {
            dir.parent().unwrap_or(Path::new("/")).join(target)
        };
        if let Some(p) = reroot(&abs, dir) {
            build = p;
        }
    }
    let uts = build.join("include/generated/utsrelease.h");
    let text = std::fs::read_to_string(&uts)
        .map_err(|_| KobjError::NoHeaders(dir.to_path_buf(), running_release()))?;
    let release = text
        .lines()
        .find_map(|l| l.strip_prefix("#define UTS_RELEASE "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| KobjError::NoHeaders(dir.to_path_buf(), running_release()))?;
    if build.join("include/linux/sched.h").exists() {
        return Ok(HeaderTree {
            source: build.clone(),
            build,
            release,
        });
    }
    // Debian: the build tree's Makefile is `include <source>/Makefile`.
    let makefile = std::fs::read_to_string(build.join("Makefile")).unwrap_or_default();
    let named = makefile
        .lines()
        .find_map(|l| l.strip_prefix("include "))
        .and_then(|p| p.trim().strip_suffix("/Makefile"))
        .map(PathBuf::from);
    let source = named.as_deref().and_then(|p| {
        reroot(p, &build).or_else(|| {
            // unpacked side by side: .../usr/src/linux-headers-R-common
            let sib = build.parent()?.join(p.file_name()?);
            sib.exists().then_some(sib)
        })
    });
    match source {
        Some(source) if source.join("include/linux/sched.h").exists() => Ok(HeaderTree {
            build,
            source,
            release,
        }),
        _ => Err(KobjError::NoSourceTree {
            build,
            tried: named.map_or_else(
                || "(none named in its Makefile)".into(),
                |p| p.display().to_string(),
            ),
        }),
    }
}

fn tool(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.into())
}

fn check_tool(name: &str, package: &'static str) -> Result<(), KobjError> {
    match Command::new(name).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(KobjError::MissingTool {
            tool: name.into(),
            package,
            err: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(KobjError::MissingTool {
            tool: name.into(),
            package,
            err: e.to_string(),
        }),
    }
}

/// clang and llc are installed (checked before a build is attempted at start).
pub fn compilers_present() -> Result<(), KobjError> {
    check_tool(&tool("CLANG", "clang"), "clang")?;
    check_tool(&tool("LLC", "llc"), "llvm")
}

pub struct Built {
    pub release: String,
    pub output: PathBuf,
    pub took: Duration,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> KobjError + '_ {
    move |e| KobjError::Io(p.to_path_buf(), e)
}

/// Compile the kernel-specific object for the headers in `dir` into
/// `output` (default `<release>.bpf.o` in the current directory). The
/// recipe is the classic one: host-target clang to LLVM IR (`-target bpf`
/// chokes on x86 inline asm in the headers), then llc to BPF.
pub fn build(dir: &Path, output: Option<&Path>) -> Result<Built, KobjError> {
    let t0 = Instant::now();
    let tree = header_tree(dir)?;
    compilers_present()?;
    let output = output.map_or_else(
        || PathBuf::from(format!("{}.bpf.o", tree.release)),
        Path::to_path_buf,
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp =
        TempDir(std::env::temp_dir().join(format!("traceed-kobj-{}-{nanos}", std::process::id())));
    for (name, text) in SOURCES {
        let p = tmp.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap_or(&tmp.0)).map_err(io(&p))?;
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    let (s, b) = (&tree.source, &tree.build);
    let ir = tmp.0.join("traceed.ll");
    let resource = Command::new(tool("CLANG", "clang"))
        .arg("-print-file-name=include")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut clang = Command::new(tool("CLANG", "clang"));
    clang
        .args(["-g", "-O2", "-emit-llvm", "-c", "-nostdinc", "-isystem"])
        .arg(resource)
        .arg(format!("-I{}", s.join("arch/x86/include").display()))
        .arg(format!(
            "-I{}",
            b.join("arch/x86/include/generated").display()
        ))
        .arg(format!("-I{}", s.join("include").display()))
        .arg(format!("-I{}", b.join("include").display()))
        .arg(format!("-I{}", s.join("arch/x86/include/uapi").display()))
        .arg(format!(
            "-I{}",
            b.join("arch/x86/include/generated/uapi").display()
        ))
        .arg(format!("-I{}", s.join("include/uapi").display()))
        .arg(format!("-I{}", b.join("include/generated/uapi").display()))
        .arg("-include")
        .arg(s.join("include/linux/kconfig.h"))
        .arg(format!("-I{}", tmp.0.join("include").display()))
        .args([
            "-D__KERNEL__",
            "-D__BPF_TRACING__",
            "-D__TARGET_ARCH_x86",
            "-fno-stack-protector",
            "-Wno-unused-value",
            "-Wno-pointer-sign",
            "-Wno-compare-distinct-pointer-types",
            "-Wno-gnu-variable-sized-type-not-at-end",
            "-Wno-address-of-packed-member",
            "-Wno-tautological-compare",
            "-Wno-unknown-warning-option",
        ])
        .arg(tmp.0.join("src/traceed.bpf.c"))
        .arg("-o")
        .arg(&ir);
    run(clang, "clang (C to LLVM IR)", &tree.release)?;
    let obj = tmp.0.join("traceed.bpf.o");
    let mut llc = Command::new(tool("LLC", "llc"));
    llc.args(["-march=bpf", "-filetype=obj"])
        .arg(&ir)
        .arg("-o")
        .arg(&obj);
    run(llc, "llc (LLVM IR to BPF)", &tree.release)?;
    // The object must say what it was built for, or the loader refuses it.
    let bytes = std::fs::read(&obj).map_err(io(&obj))?;
    if section(&bytes, RELEASE_SECTION).is_none() {
        return Err(KobjError::Compile {
            step: "checking the object",
            release: tree.release,
            stderr: format!("no {RELEASE_SECTION} section"),
        });
    }
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // Write then rename: a daemon starting meanwhile never sees half a file.
    let part = output.with_extension("o.part");
    std::fs::write(&part, &bytes).map_err(io(&part))?;
    std::fs::rename(&part, &output).map_err(io(&output))?;
    Ok(Built {
        release: tree.release,
        output,
        took: t0.elapsed(),
    })
}

fn run(mut cmd: Command, step: &'static str, release: &str) -> Result<(), KobjError> {
    let out = cmd.output().map_err(|e| KobjError::Compile {
        step,
        release: release.into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Keep the first errors: later ones are mostly consequences.
    let stderr: String = stderr.lines().take(40).collect::<Vec<_>>().join("\n");
    Err(KobjError::Compile {
        step,
        release: release.into(),
        stderr,
    })
}

/// Just enough of an ELF64 little-endian object to find sections and
/// symbols; every read is bounds-checked (None past the end).
struct Elf<'a> {
    b: &'a [u8],
    shoff: usize,
    shentsize: usize,
    shnum: usize,
    shstrtab: usize,
}

impl<'a> Elf<'a> {
    fn parse(b: &'a [u8]) -> Option<Self> {
        if b.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let mut e = Self {
            b,
            shoff: 0,
            shentsize: 0,
            shnum: 0,
            shstrtab: 0,
        };
        e.shoff = e.u64_at(0x28)?;
        e.shentsize = e.u16_at(0x3a)? as usize;
        e.shnum = e.u16_at(0x3c)? as usize;
        let shstrndx = e.u16_at(0x3e)? as usize;
        e.shstrtab = e.u64_at(e.hdr(shstrndx) + 0x18)?;
        Some(e)
    }

    fn u16_at(&self, o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.b.get(o..o + 2)?.try_into().ok()?))
    }

    fn u32_at(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.b.get(o..o + 4)?.try_into().ok()?))
    }

    fn u64_at(&self, o: usize) -> Option<usize> {
        Some(u64::from_le_bytes(self.b.get(o..o + 8)?.try_into().ok()?) as usize)
    }

    fn cstr_at(&self, o: usize) -> Option<&'a [u8]> {
        let b = self.b.get(o..)?;
        Some(&b[..b.iter().position(|&c| c == 0)?])
    }

    /// Offset of section header `i`.
    fn hdr(&self, i: usize) -> usize {
        self.shoff + i * self.shentsize
    }

    fn section_name(&self, i: usize) -> Option<&'a [u8]> {
        self.cstr_at(self.shstrtab + self.u32_at(self.hdr(i))? as usize)
    }

    /// (offset, size) of section `i`'s contents.
    fn section_range(&self, i: usize) -> Option<(usize, usize)> {
        Some((
            self.u64_at(self.hdr(i) + 0x18)?,
            self.u64_at(self.hdr(i) + 0x20)?,
        ))
    }
}

/// The contents of section `name` of an ELF64 little-endian object.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let e = Elf::parse(elf)?;
    (0..e.shnum).find_map(|i| {
        if e.section_name(i)? != name.as_bytes() {
            return None;
        }
        let (off, size) = e.section_range(i)?;
        elf.get(off..off + size)
    })
}

/// The programs of a BPF object: (section, function name) of every global
/// function symbol outside `.text`, which is what aya loads as a program.
/// None when `elf` is not an ELF64 little-endian object.
pub fn programs(elf: &[u8]) -> Option<Vec<(String, String)>> {
    const SHT_SYMTAB: u32 = 2;
    const STT_FUNC: u8 = 2;
    const STB_GLOBAL: u8 = 1;
    let e = Elf::parse(elf)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let symtab = (0..e.shnum).find(|&i| e.u32_at(e.hdr(i) + 4) == Some(SHT_SYMTAB))?;
    let (off, size) = e.section_range(symtab)?;
    let strtab = e.section_range(e.u32_at(e.hdr(symtab) + 0x28)? as usize)?.0;
    let mut out = Vec::new();
    for sym in (off..off + size).step_by(24) {
        let info = *elf.get(sym + 4)?;
        let shndx = e.u16_at(sym + 6)? as usize;
        if info & 0xf != STT_FUNC || info >> 4 != STB_GLOBAL || shndx == 0 || shndx >= e.shnum {
            continue;
        }
        let sec = e.section_name(shndx)?;
        if sec == b".text" {
            continue;
        }
        out.push((
            text(sec),
            text(e.cstr_at(strtab + e.u32_at(sym)? as usize)?),
        ));
    }
    Some(out)
}

fn section_str(elf: &[u8], name: &str) -> Option<String> {
    let s = section(elf, name)?;
    let s = s.split(|&c| c == 0).next()?;
    Some(String::from_utf8_lossy(s).into_owned())
}

/// The kernel release an object was built for.
pub fn recorded_release(elf: &[u8]) -> Option<String> {
    section_str(elf, RELEASE_SECTION)
}

/// "ringbuf" or "perf": which events map the object was built with.
pub fn recorded_transport(elf: &[u8]) -> Option<String> {
    section_str(elf, TRANSPORT_SECTION)
}

/// An installed, cached or freshly built kernel-specific object for the
/// running kernel, with what it records about itself.
pub struct Located {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub info: KernelObject,
    /// The transport it was compiled for (`.traceed.transport`).
    pub transport: Transport,
}

/// Why rung 3 has no object to load.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{looked}, and [kernel] build_objects = false")]
    NotBuilding { looked: Looked },
    #[error(
        "{looked}, and no headers to build one ({} is missing: `apt-get install \
         linux-headers-{release}`, or build it elsewhere with `traceed build-object \
         --headers DIR` and copy it to {SYSTEM_OBJECTS})",
        .headers.display()
    )]
    NoHeaders {
        looked: Looked,
        headers: PathBuf,
        release: String,
    },
    #[error("{looked}, and building one failed: {err}")]
    Build { looked: Looked, err: Box<KobjError> },
    #[error("{}: {err}", .path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error(
        "{} records no kernel release (a {RELEASE_SECTION} section): not built by `traceed build-object`",
        .path.display()
    )]
    NoRelease { path: PathBuf },
    #[error(
        "{} was built for kernel {recorded}, but this kernel is {release}; its offsets \
         would be wrong: build one with `traceed build-object` against linux-headers-{release}",
        .path.display()
    )]
    OtherRelease {
        path: PathBuf,
        recorded: String,
        release: String,
    },
}

/// Where rung 3 looked for `name`: "no <name> in <system dir> or <cache>".
#[derive(Debug)]
pub struct Looked {
    pub name: String,
    pub dirs: [PathBuf; 2],
}

impl std::fmt::Display for Looked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no {} in {} or {}",
            self.name,
            self.dirs[0].display(),
            self.dirs[1].display()
        )
    }
}

/// Rung 3: `<release>.bpf.o` from the system or state directory, else
/// compiled now from this kernel's headers and cached in the state
/// directory. Its recorded release must be the running kernel's.
pub fn locate(state_dir: &Path, build_objects: bool) -> Result<Located, LocateError> {
    let release = running_release();
    let name = format!("{release}.bpf.o");
    let cache = state_dir.join("objects");
    let dirs = [PathBuf::from(SYSTEM_OBJECTS), cache.clone()];
    let mut found = dirs.iter().map(|d| d.join(&name)).find(|p| p.exists());
    let mut built_ms = None;
    if found.is_none() {
        let looked = Looked {
            name: name.clone(),
            dirs,
        };
        if !build_objects {
            return Err(LocateError::NotBuilding { looked });
        }
        let headers = default_headers();
        if !headers.exists() {
            return Err(LocateError::NoHeaders {
                looked,
                headers,
                release,
            });
        }
        let out = cache.join(&name);
        tracing::info!(headers = %headers.display(), output = %out.display(), "building the kernel-specific object");
        let b = build(&headers, Some(&out)).map_err(|err| LocateError::Build {
            looked,
            err: Box::new(err),
        })?;
        tracing::info!(output = %b.output.display(), took_ms = b.took.as_millis() as u64, "kernel-specific object built");
        built_ms = Some(b.took.as_millis() as u64);
        found = Some(b.output);
    }
    let path = found.unwrap_or_default();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(err) => return Err(LocateError::Read { path, err }),
    };
    let Some(recorded) = recorded_release(&bytes) else {
        return Err(LocateError::NoRelease { path });
    };
    // The release is also in the file name, but names are easy to get wrong
    // when objects are copied around a fleet: the recorded one decides.
    if recorded != release && std::env::var_os("TRACEED_TEST_ANY_RELEASE").is_none() {
        return Err(LocateError::OtherRelease {
            path,
            recorded,
            release,
        });
    }
    let transport = match recorded_transport(&bytes).as_deref() {
        Some("perf") => Transport::Perf,
        _ => Transport::Ringbuf,
    };
    let info = KernelObject {
        path: path.display().to_string(),
        release: recorded,
        built_now: built_ms.is_some(),
        build_ms: built_ms,
    };
    Ok(Located {
        path,
        bytes,
        info,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to daemon-ebpf/ but not embedded would build here and
    /// fail on a fleet host with "file not found".
    #[test]
    fn every_ebpf_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon-ebpf");
        for sub in ["include", "src"] {
            for e in std::fs::read_dir(root.join(sub)).unwrap() {
                let name = format!("{sub}/{}", e.unwrap().file_name().to_string_lossy());
                assert!(
                    SOURCES.iter().any(|(n, _)| *n == name),
                    "{name} is not in kobject::SOURCES"
                );
            }
        }
    }

    #[test]
    fn reroots_absolute_links_of_an_unpacked_tree() {
        let base = std::env::temp_dir().join(format!("kobj-reroot-{}", std::process::id()));
        let real = base.join("usr/src/linux-headers-9.9.9-x");
        std::fs::create_dir_all(&real).unwrap();
        let near = base.join("lib/modules/9.9.9-x/build");
        assert_eq!(
            reroot(Path::new("/usr/src/linux-headers-9.9.9-x"), &near),
            Some(real)
        );
        assert_eq!(reroot(Path::new("/usr/src/nope-9.9.9"), &near), None);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn no_section_in_garbage() {
        assert_eq!(recorded_release(b"not an elf"), None);
    }
}

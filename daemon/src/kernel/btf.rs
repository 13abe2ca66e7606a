//! BTF discovery for the CO-RE rungs: the kernel's own
//! (`/sys/kernel/btf/vmlinux`), or an external file (`btf_path`, or a
//! BTFHub-style `btf_dir` tree, unpacking `.btf.tar.xz` archives into the
//! state directory). A file named for another kernel is refused.

use std::path::{Path, PathBuf};

use aya::{Btf, Endianness};

use super::ladder::{LoadOptions, Rung};
use super::{error_chain, kernel_release};

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A kernel release-looking part of a file name ("6.1.0-18-amd64" in
/// ".../6.1.0-18-amd64.btf"): used to refuse a BTF named for another kernel.
fn release_in_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.trim_end_matches(".tar.xz").trim_end_matches(".btf");
    let looks = stem.split('.').count() >= 3 && stem.chars().next()?.is_ascii_digit();
    looks.then(|| stem.to_string())
}

pub fn target_btf(rung: Rung, opts: &LoadOptions) -> Result<(Btf, String), String> {
    match rung {
        Rung::CoreKernelBtf => {
            if !Path::new(SYS_BTF).exists() {
                return Err(format!(
                    "{SYS_BTF} does not exist: this kernel exposes no BTF (built without \
                     CONFIG_DEBUG_INFO_BTF, or /sys/kernel/btf is hidden); set btf_path (or --btf) \
                     to a BTF file for this kernel, or run with --mode fallback"
                ));
            }
            Btf::from_sys_fs()
                .map(|b| (b, SYS_BTF.to_string()))
                .map_err(|e| format!("cannot parse {SYS_BTF}: {e}"))
        }
        Rung::CoreExternalBtf => {
            let found;
            let path =
                match (&opts.btf_path, &opts.btf_dir) {
                    (Some(p), _) => p,
                    (None, Some(dir)) => {
                        found = find_in_btf_dir(dir, &opts.state_dir)?;
                        &found
                    }
                    (None, None) => return Err(
                        "no external BTF configured (btf_path or btf_dir in the config, or --btf)"
                            .into(),
                    ),
                };
            let running = kernel_release();
            if let Some(named) = release_in_name(path) {
                if named != running {
                    return Err(format!(
                        "BTF file {} is named for kernel {named}, but this kernel is {running}",
                        path.display()
                    ));
                }
            }
            Btf::parse_file(path, Endianness::default())
                .map(|b| (b, path.display().to_string()))
                .map_err(|e| {
                    format!(
                        "cannot use BTF file {}: {}",
                        path.display(),
                        error_chain(&e)
                    )
                })
        }
        Rung::KernelObject | Rung::Fallback => unreachable!("only the CO-RE object needs BTF"),
    }
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim_matches('"').to_string())
    })
}

/// `<dir>/<os-id>/<version-id>/<arch>/<release>.btf`, or the same
/// `.btf.tar.xz` (BTFHub's archive form), unpacked into the state dir.
fn find_in_btf_dir(dir: &Path, state_dir: &Path) -> Result<PathBuf, String> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let id = os_release_field(&os, "ID").unwrap_or_else(|| "linux".into());
    let version = os_release_field(&os, "VERSION_ID").unwrap_or_default();
    let release = kernel_release();
    let base = dir.join(&id).join(&version).join(std::env::consts::ARCH);
    let plain = base.join(format!("{release}.btf"));
    if plain.exists() {
        return Ok(plain);
    }
    let archive = base.join(format!("{release}.btf.tar.xz"));
    if !archive.exists() {
        return Err(format!(
            "btf_dir {} has no BTF for this kernel: looked for {} and {}",
            dir.display(),
            plain.display(),
            archive.display()
        ));
    }
    let out = state_dir.join("btf");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let st = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .map_err(|e| format!("unpacking {}: cannot run tar: {e}", archive.display()))?;
    let unpacked = out.join(format!("{release}.btf"));
    if !st.success() || !unpacked.exists() {
        return Err(format!(
            "unpacking {} did not yield {release}.btf (tar and xz-utils are needed)",
            archive.display()
        ));
    }
    Ok(unpacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_from_btfhub_names() {
        assert_eq!(
            release_in_name(Path::new("/b/debian/12/x86_64/6.1.0-18-amd64.btf")).as_deref(),
            Some("6.1.0-18-amd64")
        );
        assert_eq!(
            release_in_name(Path::new("5.10.0-28-cloud-amd64.btf.tar.xz")).as_deref(),
            Some("5.10.0-28-cloud-amd64")
        );
        assert_eq!(release_in_name(Path::new("/tmp/vmlinux")), None);
        assert_eq!(release_in_name(Path::new("/tmp/my.btf")), None);
    }
}

//! BTF discovery for the CO-RE rungs: the kernel's own
//! (`/sys/kernel/btf/vmlinux`), or an external file (`btf_path`, or a
//! BTFHub-style `btf_dir` tree, unpacking `.btf.tar.xz` archives into the
//! state directory). A file named for another kernel is refused.

use std::path::{Path, PathBuf};

use aya::{Btf, Endianness};

use super::ladder::{LoadOptions, Rung};
use super::{error_chain, kernel_release};

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "{SYS_BTF} does not exist: this kernel exposes no BTF (built without \
         CONFIG_DEBUG_INFO_BTF, or /sys/kernel/btf is hidden); set btf_path (or --btf) \
         to a BTF file for this kernel, or run with --mode fallback"
    )]
    NoKernelBtf,
    #[error("cannot parse {SYS_BTF}: {0}")]
    KernelBtf(aya::BtfError),
    #[error("no external BTF configured (btf_path or btf_dir in the config, or --btf)")]
    NotConfigured,
    #[error("BTF file {} is named for kernel {named}, but this kernel is {running}", .path.display())]
    NamedForOther {
        path: PathBuf,
        named: String,
        running: String,
    },
    /// `chain`: aya's error with its sources (the useful part is deep).
    #[error("cannot use BTF file {}: {chain}", .path.display())]
    Unusable { path: PathBuf, chain: String },
    #[error("btf_dir {} has no BTF for this kernel: looked for {} and {}", .dir.display(), .plain.display(), .archive.display())]
    NotInDir {
        dir: PathBuf,
        plain: PathBuf,
        archive: PathBuf,
    },
    #[error("{}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("unpacking {}: cannot run tar: {err}", .archive.display())]
    Tar {
        archive: PathBuf,
        err: std::io::Error,
    },
    #[error("unpacking {} did not yield {release}.btf (tar and xz-utils are needed)", .archive.display())]
    Unpack { archive: PathBuf, release: String },
}

/// A kernel release-looking part of a file name ("6.1.0-18-amd64" in
/// ".../6.1.0-18-amd64.btf"): used to refuse a BTF named for another kernel.
fn release_in_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.trim_end_matches(".tar.xz").trim_end_matches(".btf");
    let looks = stem.split('.').count() >= 3 && stem.chars().next()?.is_ascii_digit();
    looks.then(|| stem.to_string())
}

pub fn target_btf(rung: Rung, opts: &LoadOptions) -> Result<(Btf, String), BtfError> {
    match rung {
        Rung::CoreKernelBtf => {
            if !Path::new(SYS_BTF).exists() {
                return Err(BtfError::NoKernelBtf);
            }
            Btf::from_sys_fs()
                .map(|b| (b, SYS_BTF.to_string()))
                .map_err(BtfError::KernelBtf)
        }
        Rung::CoreExternalBtf => {
            let found;
            let path = match (&opts.btf_path, &opts.btf_dir) {
                (Some(p), _) => p,
                (None, Some(dir)) => {
                    found = find_in_btf_dir(dir, &opts.state_dir)?;
                    &found
                }
                (None, None) => return Err(BtfError::NotConfigured),
            };
            let running = kernel_release();
            if let Some(named) = release_in_name(path) {
                if named != running {
                    return Err(BtfError::NamedForOther {
                        path: path.clone(),
                        named,
                        running,
                    });
                }
            }
            Btf::parse_file(path, Endianness::default())
                .map(|b| (b, path.display().to_string()))
                .map_err(|e| BtfError::Unusable {
                    path: path.clone(),
                    chain: error_chain(&e),
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
fn find_in_btf_dir(dir: &Path, state_dir: &Path) -> Result<PathBuf, BtfError> {
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
        return Err(BtfError::NotInDir {
            dir: dir.to_path_buf(),
            plain,
            archive,
        });
    }
    let out = state_dir.join("btf");
    std::fs::create_dir_all(&out).map_err(|err| BtfError::Io {
        path: out.clone(),
        err,
    })?;
    let st = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .map_err(|err| BtfError::Tar {
            archive: archive.clone(),
            err,
        })?;
    let unpacked = out.join(format!("{release}.btf"));
    if !st.success() || !unpacked.exists() {
        return Err(BtfError::Unpack { archive, release });
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

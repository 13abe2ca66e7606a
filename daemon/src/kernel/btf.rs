//! BTF discovery for the CO-RE rungs: the kernel's own
//! (`/sys/kernel/btf/vmlinux`), or an external file (`btf_path`, or a
//! BTFHub-style `btf_dir` tree, unpacking `.btf.tar.xz` archives into the
//! state directory). A file named for another kernel is refused.
//!
//! Also the kernel's trampoline targets without a second parse of its BTF
//! (`kernel_funcs`, `func_index`): aya's loader parses it once anyway, and
//! a second parsed copy (~20 MiB of heap) was the daemon's memory peak.

use std::path::{Path, PathBuf};

use aya::{Btf, Endianness};
use aya_obj::btf::{BtfType, Func, FuncLinkage};

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
    #[error("cannot walk {SYS_BTF}: {0}")]
    Scan(ScanError),
}

/// Why a raw BTF blob could not be walked (`func_ids`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("no BTF header (magic, version or section bounds)")]
    Header,
    #[error("type {id} is of kind {kind}, which this traceed does not know")]
    Kind { id: u32, kind: u32 },
    #[error("the type section ends inside type {0}")]
    Truncated(u32),
}

/// Bytes that follow a type's 12-byte header, by kind (include/uapi/linux/
/// btf.h), for the kinds aya 0.14 parses: a blob this walks, aya parses.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7..=12 | 16 | 18 => 0,
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
        _ => return None,
    })
}

/// The ids of the FUNC types named in `names`, walking the type section of
/// native-endian raw BTF without parsing it. Names it does not have are
/// left out.
pub fn func_ids(raw: &[u8], names: &[&str]) -> Result<Vec<(String, u32)>, ScanError> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let header = || -> Option<(&[u8], &[u8])> {
        let magic = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
        if magic != 0xeb9f || *raw.get(2)? != 1 {
            return None;
        }
        let hdr_len = u32_at(raw, 4)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(u32_at(raw, off)? as usize)?;
            raw.get(start..start.checked_add(u32_at(raw, len)? as usize)?)
        };
        Some((section(8, 12)?, section(16, 20)?))
    };
    let (types, strings) = header().ok_or(ScanError::Header)?;
    let name_at = |off: u32| -> Option<&[u8]> {
        let s = strings.get(off as usize..)?;
        Some(&s[..s.iter().position(|&b| b == 0)?])
    };
    let mut found = Vec::new();
    let (mut at, mut id) = (0usize, 1u32);
    while at < types.len() {
        let (Some(name_off), Some(info)) = (u32_at(types, at), u32_at(types, at + 4)) else {
            return Err(ScanError::Truncated(id));
        };
        let kind = (info >> 24) & 0x1f;
        let extra =
            extra_bytes(kind, (info & 0xffff) as usize).ok_or(ScanError::Kind { id, kind })?;
        if kind == 12 {
            if let Some(name) =
                name_at(name_off).and_then(|n| names.iter().find(|w| w.as_bytes() == n))
            {
                found.push((name.to_string(), id));
            }
        }
        at += 12 + extra;
        if at > types.len() {
            return Err(ScanError::Truncated(id));
        }
        id += 1;
    }
    Ok(found)
}

/// `func_ids` of the running kernel's own BTF.
pub fn kernel_funcs(names: &[&str]) -> Result<Vec<(String, u32)>, BtfError> {
    let raw = std::fs::read(SYS_BTF).map_err(|err| BtfError::Io {
        path: SYS_BTF.into(),
        err,
    })?;
    func_ids(&raw, names).map_err(BtfError::Scan)
}

/// A BTF in which each of `funcs` is a FUNC of its name at its id in the
/// kernel's BTF, every other id below the largest a placeholder. aya's
/// FEntry/FExit::load only look their function up by name and kind and
/// hand the kernel that id, so this is all they need of the kernel's BTF:
/// a few MiB of placeholders instead of the whole parse.
pub fn func_index(funcs: &[(String, u32)]) -> Btf {
    let mut sorted: Vec<&(String, u32)> = funcs.iter().collect();
    sorted.sort_by_key(|(_, id)| *id);
    let mut btf = Btf::new();
    let mut next = 1;
    for (name, id) in sorted {
        if *id < next {
            continue; // a repeated name: its first id
        }
        while next < *id {
            next = btf.add_type(BtfType::Unknown) + 1;
        }
        let name = btf.add_string(name);
        next = btf.add_type(BtfType::Func(Func::new(name, 0, FuncLinkage::Global))) + 1;
    }
    btf
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

    fn func_id(btf: &Btf, name: &str) -> Option<u32> {
        btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
            .ok()
    }

    /// Raw BTF of `types` (kind, vlen, name) with each type's extra bytes
    /// zeroed, and its string section.
    fn blob(types: &[(u32, u32, &str)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut ty = Vec::new();
        for &(kind, vlen, name) in types {
            let off = if name.is_empty() {
                0
            } else {
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                (strings.len() - name.len() - 1) as u32
            };
            ty.extend_from_slice(&off.to_ne_bytes());
            ty.extend_from_slice(&((kind << 24) | vlen).to_ne_bytes());
            ty.extend_from_slice(&0u32.to_ne_bytes());
            ty.resize(ty.len() + extra_bytes(kind, vlen as usize).unwrap_or(0), 0);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9fu16.to_ne_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24,
            0,
            ty.len() as u32,
            ty.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&ty);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn the_walk_finds_functions_by_name_past_every_kind() {
        let b = blob(&[
            (1, 0, "int"),
            (13, 2, ""),
            (12, 0, "f"),
            (4, 3, "s"),
            (6, 2, "e"),
            (19, 1, "e64"),
            (15, 2, ".data"),
            (3, 0, ""),
            (14, 0, "v"),
            (17, 0, "tag"),
            (12, 0, "g"),
            (12, 0, "not_wanted"),
        ]);
        let found = func_ids(&b, &["g", "f", "absent"]).unwrap();
        assert_eq!(found, [("f".to_string(), 3), ("g".to_string(), 11)]);
        // aya's parse of the same blob agrees.
        let btf = Btf::parse(&b, Endianness::default()).unwrap();
        assert_eq!(func_id(&btf, "g"), Some(11));
        let index = func_index(&found);
        for (name, id) in &found {
            assert_eq!(func_id(&index, name), Some(*id));
        }
    }

    #[test]
    fn the_walk_refuses_what_it_cannot_follow() {
        let good = blob(&[(1, 0, "int"), (4, 2, "s"), (12, 0, "f")]);
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        assert_eq!(func_ids(&bad_magic, &["f"]), Err(ScanError::Header));
        // The header's type length runs past the blob.
        assert_eq!(func_ids(&good[..40], &["f"]), Err(ScanError::Header));
        // A struct whose members run past the type section.
        let mut cut = good.clone();
        let info_of_s = 24 + 16 + 4;
        cut[info_of_s..info_of_s + 4].copy_from_slice(&((4u32 << 24) | 9).to_ne_bytes());
        assert_eq!(func_ids(&cut, &["f"]), Err(ScanError::Truncated(2)));
        let mut kind = good;
        kind[info_of_s..info_of_s + 4].copy_from_slice(&(30u32 << 24).to_ne_bytes());
        assert_eq!(
            func_ids(&kind, &["f"]),
            Err(ScanError::Kind { id: 2, kind: 30 })
        );
    }

    /// On this machine's kernel: every trampoline target found at the id
    /// aya's full parse gives it, and found there in the small index.
    #[test]
    fn the_walk_agrees_with_a_full_parse_of_this_kernel() {
        if !Path::new(SYS_BTF).exists() {
            eprintln!("skipped: no {SYS_BTF}");
            return;
        }
        let hooks = super::super::hooks::core_hooks(false, true, true);
        let names = super::super::hooks::trampoline_functions(&hooks);
        assert!(names.len() > 20, "{names:?}");
        let found = kernel_funcs(&names).unwrap();
        let full = Btf::from_sys_fs().unwrap();
        let index = func_index(&found);
        for name in &names {
            let want = func_id(&full, name);
            let got = found.iter().find(|(n, _)| n == name).map(|(_, id)| *id);
            assert_eq!(got, want, "{name}");
            if want.is_some() {
                assert_eq!(func_id(&index, name), want, "{name}");
            }
        }
        assert!(found.len() > 20, "{found:?}");
    }

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

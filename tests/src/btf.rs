//! Just enough of the BTF format to make a "BTF of another kernel": a copy
//! of the running kernel's BTF with one struct member moved, as a kernel
//! with a different layout would describe it.

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn cstr_at(b: &[u8], off: usize) -> &str {
    let end = b[off..]
        .iter()
        .position(|&c| c == 0)
        .map_or(b.len(), |p| off + p);
    std::str::from_utf8(&b[off..end]).unwrap_or("")
}

/// Bytes of type data following the common 12-byte header, per kind.
fn extra_len(kind: u32, vlen: usize) -> usize {
    match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
        _ => 0,
    }
}

/// Shift member `member` of struct `strukt` by `delta_bits`; returns false
/// if the member was not found.
pub fn shift_member(btf: &mut [u8], strukt: &str, member: &str, delta_bits: u32) -> bool {
    assert_eq!(
        u32::from(u16::from_le_bytes([btf[0], btf[1]])),
        0xeb9f,
        "not BTF"
    );
    let hdr_len = u32_at(btf, 4) as usize;
    let type_off = hdr_len + u32_at(btf, 8) as usize;
    let type_len = u32_at(btf, 12) as usize;
    let str_off = hdr_len + u32_at(btf, 16) as usize;
    let mut p = type_off;
    while p < type_off + type_len {
        let name = cstr_at(btf, str_off + u32_at(btf, p) as usize).to_string();
        let info = u32_at(btf, p + 4);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let members = p + 12;
        if (kind == KIND_STRUCT || kind == KIND_UNION) && name == strukt {
            for i in 0..vlen {
                let m = members + i * 12;
                if cstr_at(btf, str_off + u32_at(btf, m) as usize) == member {
                    let off = u32_at(btf, m + 8);
                    // With kind_flag the low 24 bits are the bit offset.
                    let new = if kind_flag {
                        (off & 0xff00_0000) | ((off & 0xff_ffff) + delta_bits)
                    } else {
                        off + delta_bits
                    };
                    btf[m + 8..m + 12].copy_from_slice(&new.to_le_bytes());
                    return true;
                }
            }
        }
        p = members + extra_len(kind, vlen);
    }
    false
}

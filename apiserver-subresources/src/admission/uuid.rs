//! The default firmware (SMBIOS) UUID of a VMI.
//!
//! KubeVirt derives it with a name-based (version 5, SHA-1) UUID from the VMI's
//! name, so that a VMI recreated under the same name keeps its UUID (guest
//! licences and cloud-init instance checks rely on it). ironvirt does the same
//! without a SHA-1 dependency: the 128-bit FNV-1a hash of
//! `ironvirt.io/firmware-uuid/<namespace>/<name>`, then a bijective
//! xorshift-multiply finaliser so that similar names give unrelated-looking
//! UUIDs, formatted as a version-5, RFC 4122-variant UUID. The derivation is
//! stable: changing it would change the UUID of newly created VMIs.

/// FNV-1a 128-bit offset basis.
const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
/// FNV-1a 128-bit prime (2^88 + 0x13b).
const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
/// Odd multipliers for the finaliser (any odd constant keeps it bijective).
const MIX_A: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
const MIX_B: u128 = 0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9;

/// 128-bit FNV-1a.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u128::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// Spreads every input bit over the whole value (each step is a bijection).
fn finalise(mut h: u128) -> u128 {
    h ^= h >> 67;
    h = h.wrapping_mul(MIX_A);
    h ^= h >> 59;
    h = h.wrapping_mul(MIX_B);
    h ^ (h >> 64)
}

/// A stable 128-bit hash of `key`, also used to shorten long annotation keys.
pub(crate) fn hash128(key: &str) -> u128 {
    finalise(fnv1a_128(key.as_bytes()))
}

/// The default firmware UUID of the VMI `namespace/name`: lowercase
/// `xxxxxxxx-xxxx-5xxx-[89ab]xxx-xxxxxxxxxxxx`, the same for the same
/// namespace and name.
pub fn firmware_uuid(namespace: &str, name: &str) -> String {
    let mut b = hash128(&format!("ironvirt.io/firmware-uuid/{namespace}/{name}")).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x50; // version 5
    b[8] = (b[8] & 0x3f) | 0x80; // variant RFC 4122
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a_128(b""), FNV_OFFSET);
        assert_eq!(fnv1a_128(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn the_derivation_is_pinned() {
        // Changing these changes the SMBIOS UUID of every new VMI.
        assert_eq!(
            firmware_uuid("default", "vmi-busybox"),
            "037e02e8-1e9b-540a-be66-ffce474bc865"
        );
        assert_eq!(
            firmware_uuid("ns", "vm"),
            "1992e98f-16b1-5304-a838-2b1805d4c601"
        );
    }

    #[test]
    fn uuids_are_stable_version_5_and_distinct() {
        let a = firmware_uuid("default", "vmi-busybox");
        assert_eq!(a, firmware_uuid("default", "vmi-busybox"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, firmware_uuid("other", "vmi-busybox"));
        let b = firmware_uuid("default", "vmi-busyboy");
        // Names one letter apart share no long run of digits.
        let same = a.chars().zip(b.chars()).filter(|(x, y)| x == y).count();
        assert!(same < 20, "{a} vs {b}");
    }
}

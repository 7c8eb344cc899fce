//! Byte classes of RFC 9110 (`tchar`, VCHAR, `field-vchar`) and the scans over them that the
//! parser spends most of its time in. On x86_64 the long scans (targets, field values) test 16
//! bytes per step with SSE2, which every x86_64 CPU has; elsewhere they fall back to a byte loop.

/// A 256-entry table: true for ASCII letters and digits and for each byte in `extra`.
const fn alnum_and(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// `tchar` (RFC 9110 §5.6.2): the bytes allowed in methods, field names and list tokens.
static TCHAR: [bool; 256] = alnum_and(b"!#$%&'*+-.^_`|~");

#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// Bytes of a Host value: `uri-host [":" port]` where uri-host is an IP-literal, IPv4 address
/// or reg-name (unreserved, sub-delims, pct-encoded), RFC 3986 §3.2.2.
static HOST: [bool; 256] = alnum_and(b"-._~!$&'()*+,;=%:[]");

#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    HOST[b as usize]
}

/// Index of the first byte at or after `pos` that is not a `tchar` (or `buf.len()`).
///
/// Field names are nearly always letters, digits and `-`: those are matched 16 at a time, and
/// any other byte is looked up in the table.
#[inline]
pub(crate) fn skip_tchars(buf: &[u8], mut pos: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        while let Some(chunk) = buf.get(pos..pos + 16) {
            // SAFETY: as in `skip_vchars`. Setting bit 0x20 folds A-Z onto a-z; signed compares
            // leave every byte >= 0x80 out of both ranges.
            let (simple, colon) = unsafe {
                let x = _mm_loadu_si128(chunk.as_ptr().cast());
                let lower = _mm_or_si128(x, _mm_set1_epi8(0x20));
                let alpha = _mm_and_si128(
                    _mm_cmpgt_epi8(lower, _mm_set1_epi8(b'a' as i8 - 1)),
                    _mm_cmpgt_epi8(_mm_set1_epi8(b'z' as i8 + 1), lower),
                );
                let digit = _mm_and_si128(
                    _mm_cmpgt_epi8(x, _mm_set1_epi8(b'0' as i8 - 1)),
                    _mm_cmpgt_epi8(_mm_set1_epi8(b'9' as i8 + 1), x),
                );
                let dash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'-' as i8));
                let colon = _mm_cmpeq_epi8(x, _mm_set1_epi8(b':' as i8));
                let simple = _mm_or_si128(_mm_or_si128(alpha, digit), dash);
                (
                    _mm_movemask_epi8(simple) as u32,
                    _mm_movemask_epi8(colon) as u32,
                )
            };
            let run = (!simple).trailing_zeros() as usize;
            if run >= 16 {
                pos += 16;
                continue;
            }
            pos += run;
            // The usual end of a name: settle it without another look at the byte.
            if colon >> run & 1 == 1 {
                return pos;
            }
            match buf.get(pos) {
                Some(&b) if is_tchar(b) => pos += 1,
                _ => return pos,
            }
        }
    }
    while let Some(&b) = buf.get(pos) {
        if !is_tchar(b) {
            break;
        }
        pos += 1;
    }
    pos
}

/// Index of the first byte at or after `pos` outside VCHAR (0x21–0x7E): the end of a request
/// target, or the byte that makes it invalid.
#[inline]
pub(crate) fn skip_vchars(buf: &[u8], mut pos: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        // A signed compare below 0x21 also catches every byte >= 0x80, which reads as negative.
        let stops = |x: __m128i| {
            // SAFETY: SSE2 is part of the x86_64 baseline; these touch registers only.
            unsafe {
                let low = _mm_cmplt_epi8(x, _mm_set1_epi8(0x21));
                let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
                _mm_movemask_epi8(_mm_or_si128(low, del)) as u32
            }
        };
        if let Some(found) = simd_find(buf, &mut pos, stops) {
            return found;
        }
    }
    while let Some(&b) = buf.get(pos) {
        if !(0x21..=0x7e).contains(&b) {
            break;
        }
        pos += 1;
    }
    pos
}

/// Index of the first control byte (0x00–0x1F, 0x7F) at or after `pos`: a field value runs
/// over VCHAR, SP and obs-text and stops at CR, or at the HTAB the caller steps over, or at a
/// byte that makes it invalid.
#[inline]
pub(crate) fn skip_field_vchars(buf: &[u8], mut pos: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        // `min(x, 0x1F) == x` holds exactly for x <= 0x1F.
        let stops = |x: __m128i| {
            // SAFETY: SSE2 is part of the x86_64 baseline; these touch registers only.
            unsafe {
                let ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
                let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
                _mm_movemask_epi8(_mm_or_si128(ctl, del)) as u32
            }
        };
        if let Some(found) = simd_find(buf, &mut pos, stops) {
            return found;
        }
    }
    while let Some(&b) = buf.get(pos) {
        if b <= 0x1f || b == 0x7f {
            break;
        }
        pos += 1;
    }
    pos
}

/// Advances `pos` 32, then 16 bytes at a time while `stops` (a bit per byte of a 16-byte
/// block) finds nothing; returns the first stop found, or `None` with `pos` at the last
/// under-16-byte tail for the caller's byte loop.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn simd_find(
    buf: &[u8],
    pos: &mut usize,
    stops: impl Fn(core::arch::x86_64::__m128i) -> u32,
) -> Option<usize> {
    use core::arch::x86_64::_mm_loadu_si128;
    while let Some(chunk) = buf.get(*pos..*pos + 32) {
        // SAFETY: `chunk` is 32 readable bytes; `loadu` has no alignment requirement.
        let (a, b) = unsafe {
            let p = chunk.as_ptr();
            (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast()))
        };
        let mask = stops(a) | stops(b) << 16;
        if mask != 0 {
            return Some(*pos + mask.trailing_zeros() as usize);
        }
        *pos += 32;
    }
    if let Some(chunk) = buf.get(*pos..*pos + 16) {
        // SAFETY: `chunk` is 16 readable bytes.
        let mask = stops(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) });
        if mask != 0 {
            return Some(*pos + mask.trailing_zeros() as usize);
        }
        *pos += 16;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_scans_agree_with_the_byte_rules() {
        for b in 0..=255u8 {
            for at in [0usize, 5, 15, 16, 17, 31, 40] {
                let mut buf = vec![b'a'; 48];
                buf[at] = b;
                let vchar = (0x21..=0x7e).contains(&b);
                assert_eq!(
                    skip_vchars(&buf, 0),
                    if vchar { 48 } else { at },
                    "{b:#x}@{at}"
                );
                let field = !(b <= 0x1f || b == 0x7f);
                assert_eq!(skip_field_vchars(&buf, 0), if field { 48 } else { at });
                assert_eq!(skip_tchars(&buf, 0), if is_tchar(b) { 48 } else { at });
            }
        }
    }
}

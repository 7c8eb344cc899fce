//! Byte classes of RFC 9110 (`tchar`, VCHAR, `field-vchar`) and the scans over them that the
//! parser spends most of its time in. On x86_64 the long scans (targets, field values) test 16
//! bytes per step with SSE2, which every x86_64 CPU has; elsewhere they fall back to a byte loop.

/// `tchar` (RFC 9110 §5.6.2): the bytes allowed in methods, field names and list tokens.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// Bytes of a Host value: `uri-host [":" port]` where uri-host is an IP-literal, IPv4 address
/// or reg-name (unreserved, sub-delims, pct-encoded), RFC 3986 §3.2.2.
#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
                | b':'
                | b'['
                | b']'
        )
}

/// Index of the first byte at or after `pos` that is not a `tchar` (or `buf.len()`).
#[inline]
pub(crate) fn skip_tchars(buf: &[u8], mut pos: usize) -> usize {
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
            _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        while let Some(chunk) = buf.get(pos..pos + 16) {
            // SAFETY: `chunk` is 16 readable bytes and `loadu` has no alignment requirement;
            // SSE2 is part of the x86_64 baseline. A signed compare below 0x21 also catches
            // every byte >= 0x80, which reads as negative.
            let mask = unsafe {
                let x = _mm_loadu_si128(chunk.as_ptr().cast());
                let low = _mm_cmplt_epi8(x, _mm_set1_epi8(0x21));
                let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
                _mm_movemask_epi8(_mm_or_si128(low, del)) as u32
            };
            if mask != 0 {
                return pos + mask.trailing_zeros() as usize;
            }
            pos += 16;
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
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        while let Some(chunk) = buf.get(pos..pos + 16) {
            // SAFETY: as in `skip_vchars`. `min(x, 0x1F) == x` holds exactly for x <= 0x1F.
            let mask = unsafe {
                let x = _mm_loadu_si128(chunk.as_ptr().cast());
                let ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
                let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
                _mm_movemask_epi8(_mm_or_si128(ctl, del)) as u32
            };
            if mask != 0 {
                return pos + mask.trailing_zeros() as usize;
            }
            pos += 16;
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
                assert_eq!(skip_vchars(&buf, 0), if vchar { 48 } else { at }, "{b:#x}@{at}");
                let field = !(b <= 0x1f || b == 0x7f);
                assert_eq!(skip_field_vchars(&buf, 0), if field { 48 } else { at });
                assert_eq!(skip_tchars(&buf, 0), if is_tchar(b) { 48 } else { at });
            }
        }
    }
}

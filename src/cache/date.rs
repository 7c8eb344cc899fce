//! HTTP dates (RFC 9110 §5.6.7) as seconds since the Unix epoch. Only IMF-fixdate, the form
//! every sender must use, is read; the obsolete RFC 850 and asctime forms count as invalid,
//! which the callers treat the safe way (an `Expires` that cannot be read means stale; an
//! `If-Modified-Since` that cannot be read is ignored).

const DAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn parse(value: &[u8]) -> Option<i64> {
    let fixed: &[u8; 29] = value.try_into().ok()?;
    let [d0, d1, d2, b',', b' ', t0, t1, b' ', m0, m1, m2, b' ', y0, y1, y2, y3, b' ', h0, h1, b':', n0, n1, b':', s0, s1, b' ', b'G', b'M', b'T'] =
        *fixed
    else {
        return None;
    };
    if !DAYS.contains(&&[d0, d1, d2]) {
        return None;
    }
    let month = MONTHS.iter().position(|m| **m == [m0, m1, m2])? as i64 + 1;
    let day = digits(&[t0, t1])?;
    let year = digits(&[y0, y1, y2, y3])?;
    let (hour, minute, second) = (digits(&[h0, h1])?, digits(&[n0, n1])?, digits(&[s0, s1])?);
    // 60 seconds allows a leap second.
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(ds: &[u8]) -> Option<i64> {
    ds.iter().try_fold(0i64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

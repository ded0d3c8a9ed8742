//! PAX extended headers (POSIX.1-2001 `x` records), parsed and written by
//! their length prefix so that values may hold any byte, newlines included
//! (xattr values are raw bytes). Also the decimal timestamps PAX uses.

use crate::records::Timestamp;

/// The prefix of a PAX key carrying an extended attribute.
pub(crate) const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// The PAX key for an xattr name. As GNU tar does, `%` and `=` in the name
/// are written `%25` and `%3D` (a key ends at the first `=`).
pub(crate) fn xattr_key(name: &[u8]) -> Vec<u8> {
    let mut key = XATTR_PREFIX.to_vec();
    for &b in name {
        match b {
            b'%' => key.extend_from_slice(b"%25"),
            b'=' => key.extend_from_slice(b"%3D"),
            _ => key.push(b),
        }
    }
    key
}

/// The xattr name in a PAX key (after [`XATTR_PREFIX`]), `%25` and `%3D` decoded.
pub(crate) fn xattr_name(encoded: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((&b, tail)) = rest.split_first() {
        if tail.starts_with(b"25") && b == b'%' {
            name.push(b'%');
            rest = &tail[2..];
        } else if tail.starts_with(b"3D") && b == b'%' {
            name.push(b'=');
            rest = &tail[2..];
        } else {
            name.push(b);
            rest = tail;
        }
    }
    name
}

/// One PAX record: key and value bytes.
pub(crate) type Record<'a> = (&'a [u8], &'a [u8]);

/// Parses PAX records (`LEN KEY=VALUE\n`), in order. Later records for the
/// same key override earlier ones; callers apply them in order.
pub(crate) fn parse_records(mut data: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut out = Vec::new();
    // Some writers pad the record block with NULs.
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record with a bad length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("PAX record length does not match its content".into());
        }
        let kv = &data[space + 1..len - 1];
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without `=`")?;
        out.push((&kv[..eq], &kv[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

/// Appends one PAX record for `key` = `value` to `out`.
pub(crate) fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // The length counts its own digits: find the width that is self-consistent.
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut digits = 1;
    while (rest + digits).to_string().len() != digits {
        digits += 1;
    }
    out.extend_from_slice((rest + digits).to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Parses a PAX time (`[-]SECONDS[.FRACTION]`); digits beyond nanoseconds are dropped.
pub(crate) fn parse_time(value: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        return Some(Timestamp { sec, nsec });
    }
    if nsec == 0 {
        Some(Timestamp { sec: -sec, nsec: 0 })
    } else {
        Some(Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        })
    }
}

/// Formats a time for PAX, always with nine fraction digits (deterministic).
pub(crate) fn format_time(t: Timestamp) -> String {
    if t.sec >= 0 || t.nsec == 0 {
        return format!("{}.{:09}", t.sec, t.nsec);
    }
    // sec + nsec/1e9 with sec < 0 and nsec > 0 is -(|sec + 1| + (1e9 - nsec)/1e9).
    let whole = -(t.sec + 1);
    format!("-{}.{:09}", whole, 1_000_000_000 - t.nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_newlines_and_binary_values() {
        let mut data = Vec::new();
        push_record(&mut data, b"mtime", b"1.5");
        push_record(&mut data, b"SCHILY.xattr.user.bin", b"a\nb=\0\xff");
        let long = vec![b'x'; 95]; // makes the record length cross 100
        push_record(&mut data, b"path", &long);
        let recs = parse_records(&data).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], (&b"mtime"[..], &b"1.5"[..]));
        assert_eq!(
            recs[1],
            (&b"SCHILY.xattr.user.bin"[..], &b"a\nb=\0\xff"[..])
        );
        assert_eq!(recs[2].1, &long[..]);
    }

    #[test]
    fn xattr_names_escape_percent_and_equals() {
        let key = xattr_key(b"user.a=b%c");
        assert_eq!(key, b"SCHILY.xattr.user.a%3Db%25c");
        assert_eq!(xattr_name(&key[XATTR_PREFIX.len()..]), b"user.a=b%c");
        assert_eq!(xattr_name(b"user.100%"), b"user.100%");
        assert_eq!(xattr_name(b"user.%41"), b"user.%41");
    }

    #[test]
    fn record_length_counts_its_own_digits() {
        let mut data = Vec::new();
        push_record(&mut data, b"k", b"1234"); // "9 k=1234\n" is 9 bytes
        assert_eq!(data, b"9 k=1234\n");
        let mut data = Vec::new();
        push_record(&mut data, b"k", b"12345"); // 10 bytes with a 2-digit length: "11 k=12345\n"
        assert_eq!(data, b"11 k=12345\n");
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(parse_records(b"5 a=b\n").is_err()); // length too small
        assert!(parse_records(b"x a=b\n").is_err());
        assert!(parse_records(b"7 ab\nxx").is_err());
        assert!(parse_records(b"99 a=b\n").is_err());
    }

    #[test]
    fn times_parse_and_format() {
        let t = parse_time(b"1700000000.123456789").unwrap();
        assert_eq!(
            t,
            Timestamp {
                sec: 1700000000,
                nsec: 123456789
            }
        );
        assert_eq!(format_time(t), "1700000000.123456789");
        assert_eq!(parse_time(b"5").unwrap(), Timestamp { sec: 5, nsec: 0 });
        assert_eq!(
            parse_time(b"5.1").unwrap(),
            Timestamp {
                sec: 5,
                nsec: 100_000_000
            }
        );
        assert_eq!(parse_time(b"5.1234567891").unwrap().nsec, 123_456_789);
        let neg = parse_time(b"-1.25").unwrap();
        assert_eq!(
            neg,
            Timestamp {
                sec: -2,
                nsec: 750_000_000
            }
        );
        assert_eq!(format_time(neg), "-1.250000000");
        assert_eq!(parse_time(&format_time(neg).into_bytes()).unwrap(), neg);
        let small = Timestamp { sec: -1, nsec: 1 };
        assert_eq!(format_time(small), "-0.999999999");
        assert_eq!(parse_time(format_time(small).as_bytes()).unwrap(), small);
        assert!(parse_time(b"").is_none());
        assert!(parse_time(b"1.2.3").is_none());
        assert!(parse_time(b"abc").is_none());
        assert!(parse_time(b".5").is_none());
    }
}

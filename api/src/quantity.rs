//! Kubernetes resource quantities (`500m`, `1Gi`, `2e3`), parsed to milli-units so the
//! scheduler and validation can compare them.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

/// A quantity in thousandths of the base unit (cores, bytes, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Milli(pub i128);

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

pub fn parse(s: &str) -> Result<Milli, QuantityError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "+" || num == "-" {
        return Err(QuantityError);
    }
    let (neg, digits) = match num.as_bytes()[0] {
        b'-' => (true, &num[1..]),
        b'+' => (false, &num[1..]),
        _ => (false, num),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|c| c.is_ascii_digit())
    {
        return Err(QuantityError);
    }
    // value = mantissa / 10^scale
    let mantissa: i128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| QuantityError)?;
    let scale = frac_part.len() as i32;
    let (mul_num, pow10): (i128, i32) = match suffix {
        "" => (1, 0),
        "m" => (1, -3),
        "u" => (1, -6),
        "n" => (1, -9),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().map_err(|_| QuantityError)?),
        _ => return Err(QuantityError),
    };
    // milli = mantissa * mul * 10^(pow10 + 3 - scale), rounded up as Kubernetes does.
    let exp = pow10 + 3 - scale;
    let base = mantissa.checked_mul(mul_num).ok_or(QuantityError)?;
    let v = if exp >= 0 {
        base.checked_mul(10i128.checked_pow(exp as u32).ok_or(QuantityError)?)
            .ok_or(QuantityError)?
    } else {
        let d = 10i128.checked_pow((-exp) as u32).ok_or(QuantityError)?;
        (base + d - 1) / d
    };
    Ok(Milli(if neg { -v } else { v }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse("500m"), Ok(Milli(500)));
        assert_eq!(parse("2"), Ok(Milli(2000)));
        assert_eq!(parse("0.5"), Ok(Milli(500)));
        assert_eq!(parse("1Gi"), Ok(Milli(1024 * 1024 * 1024 * 1000)));
        assert_eq!(parse("128974848"), Ok(Milli(128974848000)));
        assert_eq!(parse("129e6"), Ok(Milli(129_000_000_000)));
        assert_eq!(parse("1k"), Ok(Milli(1_000_000)));
        assert!(parse("abc").is_err());
        assert!(parse("1Qi").is_err());
    }
}

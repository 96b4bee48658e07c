//! Kubernetes `resource.Quantity` parsing (`64Mi`, `1.5Gi`, `100m`, `1e3`), exact, no floats.
//!
//! The API types keep quantities as `k8s_openapi`'s `Quantity(String)` so they round-trip
//! verbatim; [`parse_quantity`] (or [`QuantityExt`] on that type) turns one into a number.
//! Rounding follows Kubernetes' `Value()`/`MilliValue()`: up, away from zero.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

/// Why a quantity string was rejected or cannot be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("invalid quantity {0:?}")]
    Invalid(String),
    #[error("quantity {0:?} has an unknown suffix")]
    UnknownSuffix(String),
    #[error("quantity {0:?} is out of range")]
    OutOfRange(String),
    #[error("quantity {0:?} is negative")]
    Negative(String),
}

/// Which of Kubernetes' three notations a quantity was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantityFormat {
    /// `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`.
    BinarySI,
    /// `n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`.
    DecimalSI,
    /// `e<int>` / `E<int>`.
    DecimalExponent,
}

/// A parsed quantity: `(-1)^negative × mantissa × 2^exp2 × 10^exp10`, plus the text it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp2: u32,
    format: QuantityFormat,
    text: String,
}

/// Largest decimal exponent accepted (Kubernetes caps values at 2^63-1 anyway).
const MAX_EXPONENT: i32 = 1000;

/// Parses a Kubernetes quantity string.
pub fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let invalid = || QuantityError::Invalid(s.to_owned());
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(invalid());
    }
    let mut mantissa: u128 = 0;
    for c in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(c - b'0')))
            .ok_or_else(|| QuantityError::OutOfRange(s.to_owned()))?;
    }
    let frac_digits = i32::try_from(frac_part.len()).map_err(|_| invalid())?;
    let (exp10, exp2, format) = parse_suffix(suffix).ok_or_else(|| {
        if suffix.starts_with(['e', 'E']) && suffix.len() > 1 {
            QuantityError::Invalid(s.to_owned())
        } else {
            QuantityError::UnknownSuffix(s.to_owned())
        }
    })?;
    if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&exp10) {
        return Err(QuantityError::OutOfRange(s.to_owned()));
    }
    Ok(Quantity {
        negative: negative && mantissa != 0,
        mantissa,
        exp10: exp10 - frac_digits,
        exp2,
        format,
        text: s.to_owned(),
    })
}

fn parse_suffix(suffix: &str) -> Option<(i32, u32, QuantityFormat)> {
    use QuantityFormat::*;
    let found = match suffix {
        "" => (0, 0, DecimalSI),
        "n" => (-9, 0, DecimalSI),
        "u" => (-6, 0, DecimalSI),
        "m" => (-3, 0, DecimalSI),
        "k" => (3, 0, DecimalSI),
        "M" => (6, 0, DecimalSI),
        "G" => (9, 0, DecimalSI),
        "T" => (12, 0, DecimalSI),
        "P" => (15, 0, DecimalSI),
        "E" => (18, 0, DecimalSI),
        "Ki" => (0, 10, BinarySI),
        "Mi" => (0, 20, BinarySI),
        "Gi" => (0, 30, BinarySI),
        "Ti" => (0, 40, BinarySI),
        "Pi" => (0, 50, BinarySI),
        "Ei" => (0, 60, BinarySI),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Overlong exponents are out of range, not garbage.
            let value = exp.parse::<i64>().unwrap_or(i64::MAX);
            let clamped = value.clamp(i64::from(i32::MIN), i64::from(i32::MAX));
            (i32::try_from(clamped).ok()?, 0, DecimalExponent)
        }
    };
    Some(found)
}

impl Quantity {
    /// The text this was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The notation it was written in.
    pub fn format(&self) -> QuantityFormat {
        self.format
    }

    /// Exactly zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// Below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value as a whole number of bytes (or units), rounded up; an error if negative.
    pub fn to_bytes(&self) -> Result<u64, QuantityError> {
        if self.negative {
            return Err(QuantityError::Negative(self.text.clone()));
        }
        let v = self.value()?;
        u64::try_from(v).map_err(|_| QuantityError::Negative(self.text.clone()))
    }

    /// The value rounded up to an integer (Kubernetes `Value()`), within ±(2^63-1).
    pub fn value(&self) -> Result<i64, QuantityError> {
        self.scaled_i64(0)
    }

    /// The value in thousandths, rounded up (Kubernetes `MilliValue()`): `500m` → 500, `2` → 2000.
    pub fn to_millis(&self) -> Result<i64, QuantityError> {
        self.scaled_i64(3)
    }

    /// Compares two values exactly (to 10^-9); `None` if either is too large to compare.
    pub fn cmp_value(&self, other: &Quantity) -> Option<Ordering> {
        Some(self.scaled(9)?.cmp(&other.scaled(9)?))
    }

    fn scaled_i64(&self, scale10: i32) -> Result<i64, QuantityError> {
        self.scaled(scale10)
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| QuantityError::OutOfRange(self.text.clone()))
    }

    /// `value × 10^scale10`, rounded away from zero; `None` on i128 overflow.
    fn scaled(&self, scale10: i32) -> Option<i128> {
        if self.mantissa == 0 {
            return Some(0);
        }
        let m = self.mantissa.checked_mul(1u128.checked_shl(self.exp2)?)?;
        let e = self.exp10 + scale10;
        let magnitude = if e >= 0 {
            m.checked_mul(10u128.checked_pow(e.unsigned_abs())?)?
        } else {
            match 10u128.checked_pow(e.unsigned_abs()) {
                Some(d) => m.div_ceil(d),
                // 10^-e exceeds any u128 mantissa: a positive value below one.
                None => 1,
            }
        };
        let magnitude = i128::try_from(magnitude).ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_quantity(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<&K8sQuantity> for Quantity {
    type Error = QuantityError;
    fn try_from(q: &K8sQuantity) -> Result<Self, Self::Error> {
        parse_quantity(&q.0)
    }
}

/// Parsing helpers on `k8s_openapi`'s `Quantity(String)`, the type the API structs hold.
pub trait QuantityExt {
    /// Parses the string.
    fn parsed(&self) -> Result<Quantity, QuantityError>;
    /// [`Quantity::to_bytes`] of the parsed value.
    fn to_bytes(&self) -> Result<u64, QuantityError> {
        self.parsed()?.to_bytes()
    }
    /// [`Quantity::to_millis`] of the parsed value.
    fn to_millis(&self) -> Result<i64, QuantityError> {
        self.parsed()?.to_millis()
    }
}

impl QuantityExt for K8sQuantity {
    fn parsed(&self) -> Result<Quantity, QuantityError> {
        parse_quantity(&self.0)
    }
}

/// A byte count as a canonical binary quantity: `67108864` → `64Mi`, `1000` → `1000`.
pub fn bytes_quantity(bytes: u64) -> K8sQuantity {
    const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    if bytes != 0 {
        for (i, suffix) in SUFFIXES.iter().enumerate() {
            let unit = 1u64 << (60 - 10 * i);
            if bytes.is_multiple_of(unit) {
                return K8sQuantity(format!("{}{suffix}", bytes / unit));
            }
        }
    }
    K8sQuantity(bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_table() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("+5", 5),
            ("64M", 64_000_000),
            ("64Mi", 67_108_864),
            ("1Ki", 1024),
            ("1k", 1000),
            ("1.5Gi", 1_610_612_736),
            ("0.5Ki", 512),
            ("1G", 1_000_000_000),
            ("2T", 2_000_000_000_000),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1P", 1_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("1E", 1_000_000_000_000_000_000),
            ("1e3", 1000),
            ("1E6", 1_000_000),
            ("1.5e3", 1500),
            ("2e+2", 200),
            ("12e-1", 2),
            ("100m", 1),
            ("1500m", 2),
            ("1n", 1),
            ("1u", 1),
            (".5Ki", 512),
            ("5.", 5),
            ("0.000001Mi", 2),
            ("1e-1000", 1),
        ];
        for (s, want) in cases {
            assert_eq!(parse_quantity(s).unwrap().to_bytes().unwrap(), *want, "{s}");
        }
    }

    #[test]
    fn millis_table() {
        let cases: &[(&str, i64)] = &[
            ("100m", 100),
            ("1", 1000),
            ("2.5", 2500),
            ("0.1", 100),
            ("1.0001", 1001),
            ("-1", -1000),
            ("-100m", -100),
            ("-0.0001", -1),
            ("1k", 1_000_000),
            ("500u", 1),
            ("1e-3", 1),
        ];
        for (s, want) in cases {
            assert_eq!(
                parse_quantity(s).unwrap().to_millis().unwrap(),
                *want,
                "{s}"
            );
        }
    }

    #[test]
    fn errors() {
        let cases: &[(&str, QuantityError)] = &[
            ("", QuantityError::Empty),
            ("12Qi", QuantityError::UnknownSuffix("12Qi".into())),
            ("1KI", QuantityError::UnknownSuffix("1KI".into())),
            ("1ki", QuantityError::UnknownSuffix("1ki".into())),
            ("abc", QuantityError::Invalid("abc".into())),
            ("-", QuantityError::Invalid("-".into())),
            (".", QuantityError::Invalid(".".into())),
            ("1.2.3", QuantityError::Invalid("1.2.3".into())),
            ("1e", QuantityError::UnknownSuffix("1e".into())),
            ("1ex", QuantityError::Invalid("1ex".into())),
            ("1e+", QuantityError::Invalid("1e+".into())),
            (" 1", QuantityError::Invalid(" 1".into())),
            ("1 ", QuantityError::UnknownSuffix("1 ".into())),
            ("--1", QuantityError::Invalid("--1".into())),
            (
                "1e99999999999",
                QuantityError::OutOfRange("1e99999999999".into()),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(parse_quantity(s).unwrap_err(), *want, "{s}");
        }
    }

    #[test]
    fn conversion_errors() {
        assert_eq!(
            parse_quantity("-1Mi").unwrap().to_bytes(),
            Err(QuantityError::Negative("-1Mi".into()))
        );
        assert_eq!(
            parse_quantity("16Ei").unwrap().to_bytes(),
            Err(QuantityError::OutOfRange("16Ei".into()))
        );
        assert_eq!(
            parse_quantity("1e100").unwrap().value(),
            Err(QuantityError::OutOfRange("1e100".into()))
        );
        assert_eq!(parse_quantity("-0").unwrap().to_bytes(), Ok(0));
    }

    #[test]
    fn formats_and_flags() {
        assert_eq!(
            parse_quantity("1Gi").unwrap().format(),
            QuantityFormat::BinarySI
        );
        assert_eq!(
            parse_quantity("1G").unwrap().format(),
            QuantityFormat::DecimalSI
        );
        assert_eq!(
            parse_quantity("1e9").unwrap().format(),
            QuantityFormat::DecimalExponent
        );
        assert!(parse_quantity("0Mi").unwrap().is_zero());
        assert!(parse_quantity("-3").unwrap().is_negative());
        assert_eq!(parse_quantity("1.5Gi").unwrap().to_string(), "1.5Gi");
    }

    #[test]
    fn compare() {
        let q = |s: &str| parse_quantity(s).unwrap();
        assert_eq!(q("1Gi").cmp_value(&q("1024Mi")), Some(Ordering::Equal));
        assert_eq!(q("1G").cmp_value(&q("1Gi")), Some(Ordering::Less));
        assert_eq!(q("1").cmp_value(&q("999m")), Some(Ordering::Greater));
    }

    #[test]
    fn ext_and_formatting() {
        let k = K8sQuantity("64Mi".into());
        assert_eq!(k.to_bytes().unwrap(), 64 << 20);
        assert_eq!(K8sQuantity("250m".into()).to_millis().unwrap(), 250);
        assert_eq!(bytes_quantity(64 << 20).0, "64Mi");
        assert_eq!(bytes_quantity(1 << 30).0, "1Gi");
        assert_eq!(bytes_quantity(1000).0, "1000");
        assert_eq!(bytes_quantity(0).0, "0");
        assert_eq!(bytes_quantity(3 * 1024).0, "3Ki");
    }
}

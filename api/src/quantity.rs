//! `Quantity`: resource amounts such as `100m` CPU or `128Mi` of memory (`resource.Quantity`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize};

/// A resource amount as written (`"100m"`, `"1"`, `"0.5"`, `"128Mi"`, `"1G"`, `"1e3"`).
///
/// Stored as the string it was given, like the API server echoes it; parse on use with
/// [`Quantity::milli_value`] (CPU) or [`Quantity::value`] (bytes, counts). JSON numbers are
/// accepted too (`cpu: 1` in YAML).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

/// Why a quantity does not parse. Not retryable: the value is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    FormatWrong,
    #[error("unable to parse quantity's suffix")]
    Suffix,
    #[error("quantity is out of range")]
    OutOfRange,
}

/// A parsed quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parsed {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

/// At most this many significant digits are kept, so the arithmetic stays in `i128`.
const MAX_DIGITS: usize = 30;

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(QuantityError::FormatWrong);
    }
    // The suffix must look like `[eEinumkKMGTP]*[-+]?[0-9]*`, or it is a format error.
    let letters_end = suffix
        .find(|c: char| !"eEinumkKMGTP".contains(c))
        .unwrap_or(suffix.len());
    let tail = &suffix[letters_end..];
    let tail = tail.strip_prefix(['-', '+']).unwrap_or(tail);
    if !tail.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::FormatWrong);
    }
    let (exp10, exp2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exp = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .ok_or(QuantityError::Suffix)?;
            (exp.parse::<i32>().map_err(|_| QuantityError::Suffix)?, 0)
        }
    };
    if exp10.abs() > 100 {
        return Err(QuantityError::OutOfRange);
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    // Drop digits beyond what i128 holds: they cannot change a milli- or unit value.
    let kept = &digits[..digits.len().min(MAX_DIGITS)];
    let dropped = (digits.len() - kept.len()) as i32;
    let mut mantissa: i128 = if kept.is_empty() {
        0
    } else {
        kept.parse().map_err(|_| QuantityError::FormatWrong)?
    };
    if dropped > 0 && digits[kept.len()..].bytes().any(|b| b != b'0') {
        mantissa += 1; // keep rounding up
    }
    if negative {
        mantissa = -mantissa;
    }
    Ok(Parsed {
        mantissa,
        exp10: exp10 - frac.len() as i32 + dropped,
        exp2,
    })
}

impl Parsed {
    /// The value in units of `10^scale`, rounded up (away from zero), as Kubernetes'
    /// `ScaledValue` does.
    fn scaled(self, scale: i32) -> Result<i64, QuantityError> {
        let mut m = self
            .mantissa
            .checked_mul(1i128 << self.exp2)
            .ok_or(QuantityError::OutOfRange)?;
        let e = self.exp10 - scale;
        if e >= 0 {
            for _ in 0..e {
                m = m.checked_mul(10).ok_or(QuantityError::OutOfRange)?;
            }
        } else {
            let div = (0..-e).try_fold(1i128, |d, _| d.checked_mul(10));
            m = match div {
                Some(div) => {
                    let q = m / div;
                    q + (m % div).signum()
                }
                None => m.signum(), // smaller than one unit, but not zero
            };
        }
        i64::try_from(m).map_err(|_| QuantityError::OutOfRange)
    }
}

impl Quantity {
    /// The value in thousandths, rounded up: `"100m"` → 100, `"1"` → 1000, `"0.5"` → 500.
    pub fn milli_value(&self) -> Result<i64, QuantityError> {
        parse(&self.0)?.scaled(-3)
    }

    /// The value in units, rounded up: `"128Mi"` → 134217728, `"1G"` → 10⁹, `"1e3"` → 1000.
    pub fn value(&self) -> Result<i64, QuantityError> {
        parse(&self.0)?.scaled(0)
    }

    /// Checks that the string parses.
    pub fn validate(&self) -> Result<(), QuantityError> {
        parse(&self.0).map(|_| ())
    }

    /// A quantity of `milli` thousandths, written in whole units when it divides evenly.
    pub fn from_milli(milli: i64) -> Self {
        if milli % 1000 == 0 {
            Self((milli / 1000).to_string())
        } else {
            Self(format!("{milli}m"))
        }
    }

    /// A CPU amount of `nano` billionths (metrics-server's `NewScaledQuantity(n, Nano)`), in
    /// Kubernetes' canonical form: the largest of `n`, `u`, `m` or whole units that keeps it
    /// exact (`1500000n` is `1500u`).
    pub fn from_nano(nano: i64) -> Self {
        if nano == 0 {
            return Self("0".to_owned());
        }
        let mut value = nano;
        for suffix in ["n", "u", "m"] {
            if value % 1000 != 0 {
                return Self(format!("{value}{suffix}"));
            }
            value /= 1000;
        }
        Self(value.to_string())
    }

    /// A number of bytes in Kubernetes' canonical binary form (`BinarySI`): `Ki`, `Mi`, `Gi`…
    /// when a power of 1024 divides it, plain bytes otherwise.
    pub fn from_bytes(bytes: i64) -> Self {
        let mut value = bytes;
        let mut suffix = "";
        for next in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
            if value == 0 || value % 1024 != 0 {
                break;
            }
            value /= 1024;
            suffix = next;
        }
        Self(format!("{value}{suffix}"))
    }

    /// The string as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        Ok(Self(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::from(s)
    }

    #[test]
    fn cpu_in_millis() {
        for (s, m) in [
            ("100m", 100),
            ("1", 1000),
            ("0.5", 500),
            (".5", 500),
            ("2.", 2000),
            ("1.0001", 1001), // rounds up
            ("250000u", 250),
            ("1k", 1_000_000),
            ("+3", 3000),
            ("-1", -1000),
            ("0", 0),
        ] {
            assert_eq!(q(s).milli_value(), Ok(m), "{s}");
        }
    }

    #[test]
    fn memory_in_bytes() {
        for (s, b) in [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("1E", 1_000_000_000_000_000_000),
            ("64Ki", 65536),
            ("500m", 1), // rounds up
            ("129e-2", 2),
        ] {
            assert_eq!(q(s).value(), Ok(b), "{s}");
        }
    }

    #[test]
    fn errors_are_kubernetes_messages() {
        assert_eq!(q("abc").value(), Err(QuantityError::FormatWrong));
        assert_eq!(q("").value(), Err(QuantityError::FormatWrong));
        assert_eq!(q("1x").value(), Err(QuantityError::FormatWrong));
        assert_eq!(q("1..2").value(), Err(QuantityError::FormatWrong));
        assert_eq!(q("1K").value(), Err(QuantityError::Suffix));
        assert_eq!(q("1Mb").value(), Err(QuantityError::FormatWrong));
        assert_eq!(q("10Ei").value(), Err(QuantityError::OutOfRange));
        assert_eq!(
            QuantityError::Suffix.to_string(),
            "unable to parse quantity's suffix"
        );
        assert!("12Gi".parse::<Quantity>().is_ok());
        assert!("12 Gi".parse::<Quantity>().is_err());
    }

    #[test]
    fn json_numbers_are_accepted() {
        let v: Vec<Quantity> = serde_json::from_str(r#"["100m", 1, 0.5]"#).unwrap();
        assert_eq!(v, [q("100m"), q("1"), q("0.5")]);
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["100m","1","0.5"]"#);
        assert_eq!(Quantity::from_milli(1500), q("1500m"));
        assert_eq!(Quantity::from_milli(2000), q("2"));
    }

    #[test]
    fn metrics_amounts_are_written_in_canonical_form() {
        let nano = |n| Quantity::from_nano(n).0;
        assert_eq!(nano(0), "0");
        assert_eq!(nano(123_456), "123456n");
        assert_eq!(nano(1_500_000), "1500u");
        assert_eq!(nano(250_000_000), "250m");
        assert_eq!(nano(2_000_000_000), "2");
        let bytes = |b| Quantity::from_bytes(b).0;
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1500), "1500");
        assert_eq!(bytes(2048), "2Ki");
        assert_eq!(bytes(3 * 1024 * 1024 + 1024), "3073Ki");
        assert_eq!(bytes(5 << 30), "5Gi");
        for b in [1500, 2048, 5 << 30] {
            assert_eq!(Quantity::from_bytes(b).value().unwrap(), b);
        }
        assert_eq!(Quantity::from_nano(1_500_000).milli_value().unwrap(), 2);
    }
}

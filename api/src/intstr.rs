//! `IntOrString`: a port number or name, a count or a percentage (`intstr.IntOrString`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Either an integer (`8080`, `1`) or a string (`"http"`, `"25%"`); JSON carries it untagged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

/// Why an [`IntOrString`] could not be resolved to a number. Not retryable: the value is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntOrStringError {
    #[error("invalid value for IntOrString: invalid type: string is not a percentage: {0:?}")]
    NotAPercentage(String),
    #[error("invalid value {0:?}: {1}")]
    BadPercentage(String, std::num::ParseIntError),
}

impl Default for IntOrString {
    fn default() -> Self {
        Self::Int(0)
    }
}

impl From<i32> for IntOrString {
    fn from(n: i32) -> Self {
        Self::Int(n)
    }
}

impl From<&str> for IntOrString {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::String(s) => f.write_str(s),
        }
    }
}

impl IntOrString {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i32> {
        match self {
            Self::Int(n) => Some(*n),
            Self::String(_) => None,
        }
    }

    /// The string, if this is one (a port name or a percentage).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Int(_) => None,
            Self::String(s) => Some(s),
        }
    }

    /// The percentage, if this is a string of digits followed by `%`.
    pub fn percent(&self) -> Option<Result<i32, IntOrStringError>> {
        let s = self.as_str()?;
        let digits = s.strip_suffix('%')?;
        Some(
            digits
                .parse::<i32>()
                .map_err(|e| IntOrStringError::BadPercentage(s.to_owned(), e)),
        )
    }

    /// The absolute value for a total of `total`: an integer as is, a percentage of `total`
    /// rounded up or down (Kubernetes' `GetScaledValueFromIntOrPercent`). Deployments round
    /// `maxSurge` up and `maxUnavailable` down.
    pub fn resolve(&self, total: i32, round_up: bool) -> Result<i32, IntOrStringError> {
        match self {
            Self::Int(n) => Ok(*n),
            Self::String(s) => {
                let pct = self
                    .percent()
                    .ok_or_else(|| IntOrStringError::NotAPercentage(s.clone()))??;
                let product = i64::from(pct) * i64::from(total);
                let value = if round_up {
                    product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
                } else {
                    product.div_euclid(100)
                };
                Ok(value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_untagged() {
        let v: Vec<IntOrString> = serde_json::from_str(r#"[8080, "http", "25%"]"#).unwrap();
        assert_eq!(
            v,
            [
                IntOrString::Int(8080),
                "http".into(),
                IntOrString::String("25%".into())
            ]
        );
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"[8080,"http","25%"]"#);
    }

    #[test]
    fn percentages_round_as_asked() {
        let quarter = IntOrString::from("25%");
        assert_eq!(quarter.resolve(10, true).unwrap(), 3);
        assert_eq!(quarter.resolve(10, false).unwrap(), 2);
        assert_eq!(quarter.resolve(4, true).unwrap(), 1);
        assert_eq!(quarter.resolve(0, true).unwrap(), 0);
        assert_eq!(IntOrString::from("100%").resolve(7, false).unwrap(), 7);
        assert_eq!(IntOrString::Int(2).resolve(100, false).unwrap(), 2);
    }

    #[test]
    fn names_and_bad_percentages_do_not_resolve() {
        assert_eq!(
            IntOrString::from("http").resolve(3, true),
            Err(IntOrStringError::NotAPercentage("http".into()))
        );
        assert!(IntOrString::from("x%").resolve(3, true).is_err());
        assert_eq!(IntOrString::from("http").percent(), None);
    }
}

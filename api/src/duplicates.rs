//! Duplicate fields of a JSON document (`{"a": 1, "a": 2}`), which a JSON value keeps only the
//! last of: found by walking the document once with serde, and named by their path as
//! kube-apiserver names them under `fieldValidation` (`spec.replicas`,
//! `spec.containers[0].image`).

use std::{cell::RefCell, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The paths of the fields `json` names more than once (in document order), or nothing when
/// it is no JSON at all (its decoding reports that).
pub fn duplicate_fields(json: &[u8]) -> Vec<String> {
    let found = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let walk = Walk {
        path: String::new(),
        found: &found,
    };
    if walk.deserialize(&mut deserializer).is_err() {
        return Vec::new();
    }
    found.into_inner()
}

struct Walk<'a> {
    path: String,
    found: &'a RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                let mut found = self.found.borrow_mut();
                if !found.contains(&path) {
                    found.push(path.clone());
                }
            }
            map.next_value_seed(Walk {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{index}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_named_by_their_path_once_each() {
        let json = br#"{"metadata": {"name": "a", "name": "b"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "c", "image": "x", "image": "y", "image": "z"}]}}, "replicas": 2}}"#;
        assert_eq!(
            duplicate_fields(json),
            [
                "metadata.name",
                "spec.template.spec.containers[0].image",
                "spec.replicas"
            ]
        );
        assert!(duplicate_fields(br#"{"a": [1, {"b": null}], "c": true}"#).is_empty());
        assert!(duplicate_fields(b"not json").is_empty());
    }
}

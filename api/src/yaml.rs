//! YAML request bodies and manifests, decoded with a bound on alias expansion: a few kilobytes of
//! anchors and aliases (a "billion laughs" document) would otherwise decode into gigabytes.
//! Before the document is decoded, its events are walked once and the size it expands to
//! (scalar bytes plus one per node, every alias counted as what it repeats) is checked against a
//! limit, as go-yaml's "document contains excessive aliasing" check protects kube-apiserver.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Why a document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the YAML document expands to more than {limit} bytes through its aliases")]
    ExcessiveAliasing { limit: usize },
    #[error("{0}")]
    Syntax(String),
}

/// Decodes `text` into `T` when it expands to at most `limit` bytes.
pub fn from_str_bounded<T: serde::de::DeserializeOwned>(
    text: &str,
    limit: usize,
) -> Result<T, Error> {
    check_expansion(text, limit)?;
    serde_yaml::from_str(text).map_err(|e| Error::Syntax(e.to_string()))
}

/// Decodes `bytes` (UTF-8) into `T` when it expands to at most `limit` bytes.
pub fn from_slice_bounded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, Error> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Syntax(e.to_string()))?;
    from_str_bounded(text, limit)
}

/// Walks the events of every document in `text`, summing what each node expands to; stops at the
/// first byte past `limit`. Syntax errors are left to the decoder, which words them better.
pub fn check_expansion(text: &str, limit: usize) -> Result<(), Error> {
    let mut parser = Parser::new_from_str(text);
    // The expanded size of each anchored node, and of the nodes still open.
    let mut anchored: HashMap<usize, usize> = HashMap::new();
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut total = 0usize;
    let mut add = |size: usize, open: &mut Vec<(usize, usize)>| -> Result<(), Error> {
        total = total.saturating_add(size);
        if let Some((_, node)) = open.last_mut() {
            *node = node.saturating_add(size);
        }
        if total > limit {
            return Err(Error::ExcessiveAliasing { limit });
        }
        Ok(())
    };
    loop {
        let event = match parser.next_token() {
            Ok((event, _)) => event,
            Err(_) => return Ok(()),
        };
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(value, _, anchor, _) => {
                let size = value.len() + 1;
                if anchor > 0 {
                    anchored.insert(anchor, size);
                }
                add(size, &mut open)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                add(1, &mut open)?;
                open.push((anchor, 1));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, size)) = open.pop() {
                    if anchor > 0 {
                        anchored.insert(anchor, size);
                    }
                    // The node's own size is already in the total; its parent holds it too.
                    if let Some((_, parent)) = open.last_mut() {
                        *parent = parent.saturating_add(size);
                    }
                }
            }
            Event::Alias(anchor) => {
                let size = anchored.get(&anchor).copied().unwrap_or(1);
                add(size, &mut open)?;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten levels of ten aliases each: 10^10 leaves from a few hundred bytes.
    fn billion_laughs() -> String {
        let mut doc = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names: Vec<char> = "bcdefghijk".chars().collect();
        let mut previous = 'a';
        for name in names {
            let refs = vec![format!("*{previous}"); 10].join(",");
            doc.push_str(&format!("{name}: &{name} [{refs}]\n"));
            previous = name;
        }
        doc
    }

    #[test]
    fn a_billion_laughs_is_refused_before_it_is_decoded() {
        let started = std::time::Instant::now();
        let refused = from_str_bounded::<serde_json::Value>(&billion_laughs(), 3 << 20);
        assert_eq!(refused, Err(Error::ExcessiveAliasing { limit: 3 << 20 }));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn one_large_scalar_repeated_is_refused() {
        // 100 KB, aliased 100 times: 10 MB from a body of 100 KB.
        let doc = format!(
            "big: &big \"{}\"\nrefs: [{}]\n",
            "x".repeat(100_000),
            vec!["*big"; 100].join(",")
        );
        assert!(matches!(
            from_str_bounded::<serde_json::Value>(&doc, 3 << 20),
            Err(Error::ExcessiveAliasing { .. })
        ));
    }

    #[test]
    fn ordinary_documents_and_modest_aliases_decode() {
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels: &l {app: web}\n  annotations: *l\ndata:\n  k: v\n";
        let value: serde_json::Value = from_str_bounded(doc, 3 << 20).unwrap();
        assert_eq!(value["metadata"]["annotations"]["app"], "web");
        // Without aliases, the expanded size is no more than the document's own length + 1.
        let big = format!("data:\n  k: \"{}\"\n", "y".repeat(1 << 20));
        check_expansion(&big, big.len() + 1).unwrap();
    }

    #[test]
    fn syntax_errors_are_the_decoders() {
        let err = from_str_bounded::<serde_json::Value>("a: [1, 2", 1024).unwrap_err();
        assert!(matches!(err, Error::Syntax(_)), "{err:?}");
    }
}

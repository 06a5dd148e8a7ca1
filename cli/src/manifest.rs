//! Reading objects from manifests: files, folders or standard input, each holding YAML
//! documents (separated by `---`) or JSON objects, and `List`s of objects.

use std::{
    fmt, fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::Deserialize as _;
use serde_json::Value;

/// A manifest that cannot be used; none are retryable without editing it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading standard input")]
    Stdin(#[source] std::io::Error),
    #[error("file {file}, document {document}: {what}")]
    Invalid {
        file: String,
        document: usize,
        what: String,
    },
    #[error("file {file}: {what}")]
    Syntax { file: String, what: String },
    #[error("no objects passed in {0}")]
    Empty(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object of a manifest, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file as the user named it (`-` for standard input).
    pub file: String,
    /// 1-based, counting every document of the file.
    pub document: usize,
    pub object: Value,
}

impl Document {
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
    }

    /// An error about this document.
    pub fn invalid(&self, what: impl Into<String>) -> Error {
        Error::Invalid {
            file: self.file.clone(),
            document: self.document,
            what: what.into(),
        }
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file {}, document {}", self.file, self.document)
    }
}

/// The objects of every `-f` argument, in order: a folder's `.yaml`, `.yml` and `.json` files in
/// name order, `-` standard input.
pub fn read_all(sources: &[PathBuf]) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    for source in sources {
        let read = if source.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(Error::Stdin)?;
            parse("-", &text)?
        } else if source.is_dir() {
            let mut read = Vec::new();
            for file in folder_files(source)? {
                read.extend(parse_file(&file)?);
            }
            read
        } else {
            parse_file(source)?
        };
        if read.is_empty() {
            return Err(Error::Empty(source.display().to_string()));
        }
        documents.extend(read);
    }
    Ok(documents)
}

fn folder_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Read {
        path: folder.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(folder).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn parse_file(path: &Path) -> Result<Vec<Document>> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// The objects in `text`, read from `file`; each is checked to have `apiVersion`, `kind` and
/// `metadata.name`.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>> {
    let raw = if text.trim_start().starts_with(['{', '[']) {
        json_documents(file, text)?
    } else {
        yaml_documents(file, text)?
    };
    let mut documents = Vec::new();
    for (index, value) in raw.into_iter().enumerate() {
        let document = index + 1;
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    documents.push(check(file, document, item)?);
                }
            }
            Value::Object(_) if is_list(&value) => {
                let Value::Array(items) = value["items"].clone() else {
                    unreachable!("is_list checked items")
                };
                for item in items {
                    documents.push(check(file, document, item)?);
                }
            }
            other => documents.push(check(file, document, other)?),
        }
    }
    Ok(documents)
}

fn is_list(value: &Value) -> bool {
    value["kind"].as_str().is_some_and(|k| k.ends_with("List")) && value["items"].is_array()
}

fn json_documents(file: &str, text: &str) -> Result<Vec<Value>> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Syntax {
            file: file.to_owned(),
            what: format!("invalid JSON: {e}"),
        })
}

fn yaml_documents(file: &str, text: &str) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| Error::Invalid {
            file: file.to_owned(),
            document: index + 1,
            what: format!("invalid YAML: {e}"),
        })?;
        values.push(value);
    }
    Ok(values)
}

fn check(file: &str, document: usize, object: Value) -> Result<Document> {
    let invalid = |what: &str| Error::Invalid {
        file: file.to_owned(),
        document,
        what: what.to_owned(),
    };
    if !object.is_object() {
        return Err(invalid("not an object (a mapping of fields)"));
    }
    for field in ["apiVersion", "kind"] {
        match &object[field] {
            Value::String(s) if !s.is_empty() => {}
            Value::Null => return Err(invalid(&format!("{field} is required"))),
            _ => return Err(invalid(&format!("{field} must be a non-empty string"))),
        }
    }
    if !object["metadata"].is_object() && !object["metadata"].is_null() {
        return Err(invalid("metadata must be an object"));
    }
    match &object["metadata"]["name"] {
        Value::String(s) if !s.is_empty() => {}
        Value::Null => return Err(invalid("metadata.name is required")),
        _ => return Err(invalid("metadata.name must be a non-empty string")),
    }
    if !matches!(
        object["metadata"]["namespace"],
        Value::Null | Value::String(_)
    ) {
        return Err(invalid("metadata.namespace must be a string"));
    }
    Ok(Document {
        file: file.to_owned(),
        document,
        object,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn multi_document_yaml_skips_empty_documents_and_counts_them() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n---\n---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b, namespace: x}\n";
        let docs = parse("app.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].name(), docs[0].kind(), docs[0].document),
            ("a", "ConfigMap", 1)
        );
        assert_eq!(docs[0].object["data"], json!({"k": "v"}));
        assert_eq!(
            (docs[1].name(), docs[1].namespace(), docs[1].document),
            ("b", Some("x"), 4)
        );
        assert_eq!(docs[1].api_version(), "apps/v1");
    }

    #[test]
    fn json_objects_and_lists_are_read() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]}
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "z"}}"#;
        let docs = parse("app.json", text).unwrap();
        let names: Vec<_> = docs.iter().map(|d| (d.name(), d.document)).collect();
        assert_eq!(names, [("s", 1), ("c", 1), ("z", 2)]);
    }

    #[test]
    fn a_missing_name_is_reported_with_file_and_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n";
        let e = parse("app.yaml", text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "file app.yaml, document 2: metadata.name is required"
        );
        let e = parse("x.yaml", "kind: Pod\nmetadata: {name: p}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "file x.yaml, document 1: apiVersion is required"
        );
        let e = parse("x.yaml", "- 1\n").unwrap_err();
        assert!(e.to_string().contains("not an object"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_stay_on_one_line() {
        let e = parse("bad.yaml", "apiVersion: v1\nkind: [\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("file bad.yaml, document 1: invalid YAML"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        let e = parse("bad.json", "{\"apiVersion\": }").unwrap_err();
        assert!(
            e.to_string().starts_with("file bad.json: invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn a_folder_is_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let cm = |n: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}}}\n");
        fs::write(dir.path().join("b.yml"), cm("second")).unwrap();
        fs::write(dir.path().join("a.yaml"), cm("first")).unwrap();
        fs::write(
            dir.path().join("c.json"),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"third"}}"#,
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let docs = read_all(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> = docs.iter().map(Document::name).collect();
        assert_eq!(names, ["first", "second", "third"]);
        assert!(docs[0].file.ends_with("a.yaml"));
    }

    #[test]
    fn an_empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.yaml");
        fs::write(&path, "---\n# nothing\n").unwrap();
        assert!(matches!(read_all(&[path]), Err(Error::Empty(_))));
    }
}

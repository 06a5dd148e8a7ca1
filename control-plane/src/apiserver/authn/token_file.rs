//! `--token-auth-file`: static bearer tokens, in kube-apiserver's CSV format
//! `token,user,uid,"group1,group2"` (the groups column is optional).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{UserInfo, with_authenticated_group};

/// A token file that cannot be used; the server refuses to start (not retryable).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path}, line {line}: {what}")]
    Line {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The users of a token file, by token.
#[derive(Debug, Default)]
pub struct TokenFile {
    users: HashMap<String, UserInfo>,
}

impl TokenFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, what)| Error::Line {
            path: path.to_owned(),
            line,
            what,
        })
    }

    /// Parses a token file; a bad line is `(its 1-based number, what is wrong)`. As Kubernetes:
    /// empty lines are skipped, a record needs at least three columns, a record with an empty
    /// token is skipped, and of two records with the same token the later one counts.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let record = csv_record(line).map_err(|what| (number, what))?;
            let [token, name, uid, rest @ ..] = record.as_slice() else {
                return Err((
                    number,
                    format!(
                        "must have at least 3 columns (token, user name, user uid), found {}",
                        record.len()
                    ),
                ));
            };
            if token.is_empty() {
                tracing::warn!(line = number, "empty token in the token file, skipped");
                continue;
            }
            let groups = rest
                .first()
                .map(|g| {
                    g.split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let user = with_authenticated_group(UserInfo {
                name: name.clone(),
                uid: uid.clone(),
                groups,
                ..UserInfo::default()
            });
            if users.insert(token.clone(), user).is_some() {
                tracing::warn!(line = number, "duplicate token in the token file");
            }
        }
        Ok(Self { users })
    }

    /// The user `token` belongs to.
    pub fn user(&self, token: &str) -> Option<&UserInfo> {
        self.users.get(token)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The fields of one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote inside quotes).
fn csv_record(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("extraneous or missing \" in quoted-field".to_owned()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("extraneous or missing \" in quoted-field".to_owned()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("bare \" in non-quoted-field".to_owned()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_with_and_without_groups() {
        let file =
            TokenFile::parse("t1,jane,1001,\"dev,ops\"\n\nt2,joe,1002\r\nt3,\"o\"\"neil\",1003,\n")
                .unwrap();
        let jane = file.user("t1").unwrap();
        assert_eq!((jane.name.as_str(), jane.uid.as_str()), ("jane", "1001"));
        assert_eq!(jane.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(file.user("t2").unwrap().groups, ["system:authenticated"]);
        assert_eq!(file.user("t3").unwrap().name, "o\"neil");
        assert_eq!(file.user("t4"), None);
        assert_eq!(file.len(), 3);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            TokenFile::parse("t1,jane,1\nt2,joe\n").unwrap_err(),
            (
                2,
                "must have at least 3 columns (token, user name, user uid), found 2".to_owned()
            )
        );
        assert_eq!(TokenFile::parse("t1,\"jane,1\n").unwrap_err().0, 1);
        assert_eq!(TokenFile::parse("t1,ja\"ne,1\n").unwrap_err().0, 1);
    }

    #[test]
    fn empty_tokens_are_skipped_and_later_duplicates_win() {
        let file = TokenFile::parse(",nobody,0\nt,first,1\nt,second,2\n").unwrap();
        assert_eq!(file.len(), 1);
        assert_eq!(file.user("t").unwrap().name, "second");
    }
}

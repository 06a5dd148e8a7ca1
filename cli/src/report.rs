//! How failures reach the user: one line each on standard error, `Error from server (Reason): …`
//! when the server refused, `error: …` otherwise, as kubectl prints them.

use crate::{client, discovery};

/// The line printed for `error`: its context and causes joined by `: `, on one line.
pub fn error_line(error: &anyhow::Error) -> String {
    let status = error.chain().find_map(server_status);
    let text = one_line(&format!("{error:#}"));
    match status {
        Some(status) if !status.reason.is_empty() => {
            format!("Error from server ({}): {text}", status.reason)
        }
        Some(_) => format!("Error from server: {text}"),
        None => format!("error: {text}"),
    }
}

/// The server's `Status`, if `cause` is a refusal by the server (discovery's errors hide the
/// client's: they are transparent).
fn server_status<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a client::Status> {
    if let Some(e) = cause.downcast_ref::<client::Error>() {
        return e.status();
    }
    match cause.downcast_ref::<discovery::Error>() {
        Some(discovery::Error::Client(e)) => e.status(),
        _ => None,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Counts the failures of a command that goes on after one (one object of many failed).
#[derive(Debug, Default)]
pub struct Failures {
    count: usize,
}

impl Failures {
    /// Prints `error` and remembers that the command failed.
    pub fn report(&mut self, error: anyhow::Error) {
        eprintln!("{}", error_line(&error));
        self.count += 1;
    }

    /// Whether anything failed.
    pub fn any(&self) -> bool {
        self.count > 0
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn server_errors_name_their_reason_and_keep_context() {
        let status = client::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value".into(),
            details: None,
        };
        let error = Err::<(), _>(client::Error::Api(Box::new(status)))
            .context("error when creating \"app.yaml\"")
            .unwrap_err();
        assert_eq!(
            error_line(&error),
            "Error from server (Invalid): error when creating \"app.yaml\": ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"
        );
    }

    #[test]
    fn server_errors_during_discovery_name_their_reason() {
        let status = client::Status {
            code: 401,
            reason: "Unauthorized".into(),
            message: "Unauthorized".into(),
            details: None,
        };
        let error = anyhow::Error::new(discovery::Error::Client(client::Error::Api(Box::new(
            status,
        ))))
        .context("discovering");
        assert_eq!(
            error_line(&error),
            "Error from server (Unauthorized): discovering: Unauthorized"
        );
    }

    #[test]
    fn local_errors_are_one_line() {
        let error = anyhow::anyhow!("file app.yaml, document 2:\n  metadata.name is required");
        assert_eq!(
            error_line(&error),
            "error: file app.yaml, document 2: metadata.name is required"
        );
    }
}

//! The remotecommand protocol of `kubectl exec` over WebSocket (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): every binary message starts with a channel byte, and the error channel
//! carries a `Status` whose causes hold the exit code.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// v5 adds the close signal (channel 255) so a client can end the remote stdin.
pub const V5: &str = "v5.channel.k8s.io";
/// The status on the error channel is a `Status` object.
pub const V4: &str = "v4.channel.k8s.io";
/// v4 in text messages: the channel as an ASCII digit, then the data in base64 (for clients
/// that cannot send binary messages).
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// The subprotocols spoken, best first.
pub const PROTOCOLS: &[&str] = &[V5, V4, V4_BASE64];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The outcome of the command: a `Status` JSON, sent once before the server closes.
pub const ERROR: u8 = 3;
/// Terminal size changes, as [`TerminalSize`] JSON.
pub const RESIZE: u8 = 4;
/// v5 only: `[CLOSE, channel]` closes that channel (the client's stdin).
pub const CLOSE: u8 = 255;

/// What the resize channel carries (Kubernetes' `remotecommand.TerminalSize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The error-channel `Status` for a command that exited with `code`, worded like the kubelet.
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({ "metadata": {}, "status": "Success" });
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
    })
}

/// The error-channel `Status` for a command that could not run at all.
pub fn failure_status(message: &str) -> Value {
    json!({ "metadata": {}, "status": "Failure", "message": message })
}

/// How a command ended, read from an error-channel `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// The server failed the request without an exit code; the message says why.
    Failed(String),
}

/// Reads the error channel's payload (v4/v5 `Status` JSON).
pub fn outcome(status: &[u8]) -> Outcome {
    let Ok(status) = serde_json::from_slice::<Value>(status) else {
        return Outcome::Failed(String::from_utf8_lossy(status).into_owned());
    };
    if status["status"] == "Success" {
        return Outcome::Exited(0);
    }
    let code = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok());
    match code {
        Some(code) if status["reason"] == "NonZeroExitCode" => Outcome::Exited(code),
        _ => Outcome::Failed(status["message"].as_str().unwrap_or_default().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip_through_the_status() {
        let command = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        let status = exit_status(&command, 3);
        assert_eq!(
            status["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert_eq!(
            outcome(&serde_json::to_vec(&status).unwrap()),
            Outcome::Exited(3)
        );
        assert_eq!(
            outcome(&serde_json::to_vec(&exit_status(&command, 0)).unwrap()),
            Outcome::Exited(0)
        );
        assert_eq!(
            outcome(br#"{"metadata":{},"status":"Failure","message":"no such file"}"#),
            Outcome::Failed("no such file".into())
        );
    }

    #[test]
    fn terminal_sizes_use_kubernetes_field_names() {
        let size: TerminalSize = serde_json::from_str(r#"{"Width":80,"Height":24}"#).unwrap();
        assert_eq!(
            size,
            TerminalSize {
                width: 80,
                height: 24
            }
        );
    }
}

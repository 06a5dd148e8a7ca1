//! `apiary token create|list`: bootstrap tokens for joining nodes, as `kubeadm token`. A token
//! is a `kube-system` Secret of type `bootstrap.kubernetes.io/token`; `create` prints the join
//! command, with the CA pinned by hash and the token on stdin (never on a command line, where
//! other users of the machine could read it).

use std::{io::Write, time::Duration};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Session, bootstrap};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a bootstrap token and print the command that joins a node with it.
    Create(CreateArgs),
    /// List the bootstrap tokens.
    List,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// How long the token is valid (`90s`, `30m`, `24h`, `7d`); `0`: forever.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// What the token is for.
    #[arg(long, default_value = "apiary node join")]
    description: String,
}

const SECRETS: &str = "/api/v1/namespaces/kube-system/secrets";
const TYPE: &str = "bootstrap.kubernetes.io/token";

/// `90s`, `30m`, `24h`, `7d` (or `0`).
pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0)
        .with_context(|| format!("--ttl {text:?}: a number and s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().context("--ttl")?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("--ttl {text:?}: the unit is s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

/// A new random token (`[a-z0-9]{6}.[a-z0-9]{16}`).
fn generate() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut chars = Vec::with_capacity(22);
    let mut bytes = [0u8; 32];
    while chars.len() < 22 {
        getrandom(&mut bytes);
        // Only bytes below 252 (7 × 36), so that every character is equally likely.
        chars.extend(
            bytes
                .iter()
                .filter(|&&b| b < 252)
                .map(|&b| ALPHABET[usize::from(b) % ALPHABET.len()] as char),
        );
    }
    let chars: String = chars.into_iter().take(22).collect();
    format!("{}.{}", &chars[..6], &chars[6..])
}

fn getrandom(buf: &mut [u8]) {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system's random source works");
}

pub async fn run(session: &Session, command: &Command, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => create(session, args, out).await,
        Command::List => list(session, out).await,
    }
}

async fn create(session: &Session, args: &CreateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let ttl = parse_ttl(&args.ttl)?;
    let token = create_token(&session.client, ttl, &args.description).await?;
    // The join command names what cluster-info publishes: the address nodes reach and its CA.
    let info = session
        .client
        .get(
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
            &[],
        )
        .await
        .context("reading kube-public/cluster-info")?;
    let kubeconfig: Value = serde_yaml::from_str(info["data"]["kubeconfig"].as_str().unwrap_or(""))
        .context("cluster-info's kubeconfig")?;
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .context("cluster-info names no server")?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster["certificate-authority-data"].as_str().unwrap_or(""))
        .context("cluster-info's CA")?;
    let hash = bootstrap::ca_cert_hash(&ca)?;
    writeln!(
        out,
        "echo {token} | apiary node join --server {server} --token-file - --ca-cert-hash {hash}"
    )?;
    Ok(())
}

/// Creates a bootstrap token valid for `ttl` (zero: forever) and returns it.
pub async fn create_token(
    client: &crate::client::Client,
    ttl: Duration,
    description: &str,
) -> anyhow::Result<String> {
    let token = generate();
    let (id, secret) = apiary_api::bootstrap_token::parse(&token).expect("generated well-formed");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(secret),
        "usage-bootstrap-authentication": b64("true"),
        "usage-bootstrap-signing": b64("true"),
        "description": b64(description),
    });
    if !ttl.is_zero() {
        let expires =
            chrono::Utc::now() + chrono::Duration::from_std(ttl).context("--ttl is too long")?;
        data["expiration"] = json!(b64(
            &expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    let object = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": TYPE,
        "data": data,
    });
    client
        .create(SECRETS, &object)
        .await
        .context("creating the token's Secret")?;
    Ok(token)
}

async fn list(session: &Session, out: &mut impl Write) -> anyhow::Result<()> {
    let field_selector = format!("type={TYPE}");
    let secrets = session
        .client
        .get(SECRETS, &[("fieldSelector", field_selector.as_str())])
        .await?;
    let data = |s: &Value, key: &str| -> String {
        s["data"][key]
            .as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut rows = vec![[
        "TOKEN".to_owned(),
        "TTL".to_owned(),
        "EXPIRES".to_owned(),
        "USAGES".to_owned(),
        "DESCRIPTION".to_owned(),
        "EXTRA GROUPS".to_owned(),
    ]];
    for s in secrets["items"].as_array().into_iter().flatten() {
        let expires = data(s, "expiration");
        let ttl = match chrono::DateTime::parse_from_rfc3339(&expires) {
            Ok(at) => {
                let left = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
                if left <= chrono::Duration::zero() {
                    "<expired>".to_owned()
                } else {
                    short_duration(left.num_seconds())
                }
            }
            Err(_) => "<forever>".to_owned(),
        };
        let usages: Vec<&str> = ["authentication", "signing"]
            .into_iter()
            .filter(|u| data(s, &format!("usage-bootstrap-{u}")) == "true")
            .collect();
        let or_none = |s: String| if s.is_empty() { "<none>".to_owned() } else { s };
        rows.push([
            format!("{}.{}", data(s, "token-id"), data(s, "token-secret")),
            ttl,
            if expires.is_empty() {
                "<never>".to_owned()
            } else {
                expires
            },
            usages.join(","),
            or_none(data(s, "description")),
            or_none(data(s, "auth-extra-groups")),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

/// Kubernetes' `duration.ShortHumanDuration`, as `kubeadm token list` prints TTLs: one unit,
/// rounded down.
fn short_duration(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s if s < 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_like_kubeadms() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
        assert!(parse_ttl("h").is_err() && parse_ttl("5y").is_err());
    }

    #[test]
    fn ttls_print_in_one_unit() {
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(7199), "1h");
        assert_eq!(short_duration(23 * 3600 + 3599), "23h");
        assert_eq!(short_duration(3 * 86400), "3d");
    }

    #[test]
    fn generated_tokens_are_bootstrap_tokens() {
        for _ in 0..50 {
            let token = generate();
            assert!(
                apiary_api::bootstrap_token::parse(&token).is_some(),
                "{token}"
            );
        }
    }
}

//! `GET /containerLogs/{namespace}/{pod}/{container}`: the backend's log stream as a chunked body,
//! so `follow` sends lines as they come.

use std::{collections::HashMap, io, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::header,
    response::{IntoResponse as _, Response},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, stream::BoxStream};

use super::{LogRequest, PodStreams, StreamError, parse_bool};

pub(super) async fn handle(
    State(backend): State<Arc<dyn PodStreams>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let request = match parse(&query) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let limit = request.limit_bytes;
    match backend.logs(&namespace, &pod, &container, request).await {
        Ok(stream) => {
            let stream = match limit {
                Some(limit) => limited(stream, usize::try_from(limit).unwrap_or(usize::MAX)),
                None => stream,
            };
            (
                [(header::CONTENT_TYPE, "text/plain")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The first `limit` bytes of `stream`, whatever the backend did with `limitBytes`: the stream
/// ends there even when following.
fn limited(
    stream: BoxStream<'static, io::Result<Bytes>>,
    limit: usize,
) -> BoxStream<'static, io::Result<Bytes>> {
    stream
        .scan(limit, |left, chunk| {
            if *left == 0 {
                return futures::future::ready(None);
            }
            let chunk = chunk.map(|mut chunk| {
                chunk.truncate(*left);
                *left -= chunk.len();
                chunk
            });
            futures::future::ready(Some(chunk))
        })
        .boxed()
}

/// The query as kubectl (through the API server) sends it; a malformed value names its parameter.
pub(super) fn parse(query: &HashMap<String, String>) -> Result<LogRequest, StreamError> {
    let get = |name: &str| query.get(name).map(String::as_str);
    let integer = |name: &str, min: i64| -> Result<Option<i64>, StreamError> {
        let Some(value) = get(name) else {
            return Ok(None);
        };
        match value.parse::<i64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(StreamError::BadRequest(format!(
                "{name}: Invalid value: {value:?}: must be an integer greater than or equal to {min}"
            ))),
        }
    };
    let since_time = get("sinceTime")
        .map(|value| {
            DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    StreamError::BadRequest(format!(
                        "sinceTime: Invalid value: {value:?}: must be an RFC 3339 time: {e}"
                    ))
                })
        })
        .transpose()?;
    let request = LogRequest {
        follow: parse_bool("follow", get("follow"))?,
        previous: parse_bool("previous", get("previous"))?,
        tail_lines: integer("tailLines", 0)?,
        since_seconds: integer("sinceSeconds", 1)?,
        since_time,
        timestamps: parse_bool("timestamps", get("timestamps"))?,
        limit_bytes: integer("limitBytes", 1)?,
    };
    if request.since_seconds.is_some() && request.since_time.is_some() {
        return Err(StreamError::BadRequest(
            "sinceSeconds: Forbidden: at most one of sinceTime or sinceSeconds may be specified"
                .into(),
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_kubectl_parameters() {
        let request = parse(&query(&[
            ("follow", "true"),
            ("tailLines", "10"),
            ("timestamps", "true"),
            ("sinceTime", "2026-01-02T03:04:05Z"),
        ]))
        .unwrap();
        assert!(request.follow && request.timestamps && !request.previous);
        assert_eq!(request.tail_lines, Some(10));
        assert_eq!(
            request.since_time.unwrap().to_rfc3339(),
            "2026-01-02T03:04:05+00:00"
        );
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_stream() {
        let chunks = ["one\n", "two\n", "three\n"].map(|c| Ok(Bytes::from(c)));
        let stream = futures::stream::iter(chunks).chain(futures::stream::pending());
        let out: Vec<Bytes> = limited(stream.boxed(), 6)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out.concat(), b"one\ntw");
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let e = parse(&query(&[("tailLines", "-1")])).unwrap_err();
        assert!(e.to_string().starts_with("tailLines: Invalid value"), "{e}");
        let e = parse(&query(&[("sinceTime", "yesterday")])).unwrap_err();
        assert!(e.to_string().starts_with("sinceTime: Invalid value"), "{e}");
        let e = parse(&query(&[
            ("sinceSeconds", "5"),
            ("sinceTime", "2026-01-02T03:04:05Z"),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("sinceSeconds: Forbidden"), "{e}");
        for (name, value) in [
            ("sinceSeconds", "0"),
            ("limitBytes", "0"),
            ("tailLines", "x"),
        ] {
            let e = parse(&query(&[(name, value)])).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("{name}: Invalid value")),
                "{e}"
            );
        }
    }

    #[test]
    fn since_seconds_beyond_what_a_time_holds_means_the_whole_log_not_a_panic() {
        let now = Utc::now();
        let since = |seconds: &str| {
            parse(&query(&[("sinceSeconds", seconds)]))
                .unwrap()
                .since(now)
        };
        assert_eq!(since("5"), Some(now - chrono::Duration::seconds(5)));
        // Past chrono's range of durations, then past its range of times.
        assert_eq!(since(&i64::MAX.to_string()), Some(DateTime::<Utc>::MIN_UTC));
        assert_eq!(since("9000000000000000"), Some(DateTime::<Utc>::MIN_UTC));
        let huge = parse(&query(&[
            ("tailLines", &i64::MAX.to_string()),
            ("limitBytes", &i64::MAX.to_string()),
        ]));
        assert!(huge.is_ok());
    }
}

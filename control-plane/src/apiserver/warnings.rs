//! Warnings to the client (`Warning: 299 - "…"` response headers, which kubectl prints as
//! `Warning: …`), as kube-apiserver's `warning.AddWarning`: anything handling a request may add
//! one ([`add`]); the handler's scope ([`collect`]) puts them on its response.

use std::{cell::RefCell, future::Future};

use axum::{http::HeaderValue, response::Response};

tokio::task_local! {
    static WARNINGS: RefCell<Vec<String>>;
}

/// Adds a warning to the response of the request being handled (none outside [`collect`]).
pub fn add(text: impl Into<String>) {
    let text = text.into();
    let _ = WARNINGS.try_with(|w| {
        let mut w = w.borrow_mut();
        if !w.contains(&text) {
            w.push(text);
        }
    });
}

/// Runs `handler`, then adds the warnings it gave as headers of its response.
pub async fn collect(handler: impl Future<Output = Response>) -> Response {
    let (mut response, warnings) = WARNINGS
        .scope(RefCell::new(Vec::new()), async {
            let response = handler.await;
            (response, WARNINGS.with(|w| w.take()))
        })
        .await;
    for warning in warnings {
        if let Ok(value) = HeaderValue::from_str(&header(&warning)) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

/// RFC 7234's form, as Kubernetes writes it: code 299, agent `-`, the text quoted with `"` and
/// `\` escaped.
fn header(text: &str) -> String {
    let escaped: String = text
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("299 - \"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_become_headers_once_each() {
        let response = collect(async {
            add("would violate PodSecurity \"restricted:latest\"");
            add("would violate PodSecurity \"restricted:latest\"");
            Response::new(axum::body::Body::empty())
        })
        .await;
        let headers: Vec<_> = response.headers().get_all("warning").iter().collect();
        assert_eq!(headers.len(), 1);
        assert_eq!(
            headers[0],
            "299 - \"would violate PodSecurity \\\"restricted:latest\\\"\""
        );
        // Outside a scope, nothing happens.
        add("lost");
    }
}

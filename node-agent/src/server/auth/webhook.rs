//! [`Reviews`] asked of the API server with the agent's own credentials: a TokenReview
//! (`authentication.k8s.io/v1`) and a SubjectAccessReview (`authorization.k8s.io/v1`) per
//! question, as the kubelet's webhook authenticator and authorizer send them.

use serde_json::{Value, json};

use super::{Attributes, ReviewError, Reviews, User};
use crate::api_client::ApiClient;

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

#[async_trait::async_trait]
impl Reviews for ApiClient {
    async fn token_review(&self, token: &str) -> Result<Option<User>, ReviewError> {
        // No audiences: the API server's own, as the kubelet asks by default.
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token },
        });
        let answer = self
            .post(TOKEN_REVIEWS, &review)
            .await
            .map_err(|e| ReviewError(format!("{e:#}")))?;
        Ok(token_review_user(&answer))
    }

    async fn access_review(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> Result<bool, ReviewError> {
        let answer = self
            .post(ACCESS_REVIEWS, &access_review(user, attributes))
            .await
            .map_err(|e| ReviewError(format!("{e:#}")))?;
        match answer["status"]["allowed"] {
            Value::Bool(allowed) => Ok(allowed),
            // Kubernetes omits `allowed: false`.
            Value::Null if answer["kind"] == "SubjectAccessReview" => Ok(false),
            _ => Err(ReviewError(format!(
                "the SubjectAccessReview's answer is malformed: {answer}"
            ))),
        }
    }
}

/// The user of a TokenReview's answer; `None` unless `status.authenticated`.
fn token_review_user(answer: &Value) -> Option<User> {
    if answer["status"]["authenticated"] != true {
        return None;
    }
    let user = &answer["status"]["user"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let name = user["username"].as_str().unwrap_or_default().to_owned();
    // An authenticated review without a user name is no user (Kubernetes' webhook
    // authenticator would pass it on; nothing could be granted to it).
    if name.is_empty() {
        return None;
    }
    Some(User {
        name,
        uid: user["uid"].as_str().unwrap_or_default().to_owned(),
        groups: strings(&user["groups"]),
        extra: user["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(v)))
            .collect(),
    })
}

/// The SubjectAccessReview asking whether `user` may do `attributes`.
fn access_review(user: &User, attributes: &Attributes) -> Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user.name,
            "uid": user.uid,
            "groups": user.groups,
            "extra": user.extra,
            "resourceAttributes": {
                "verb": attributes.verb,
                "group": "",
                "version": "v1",
                "resource": "nodes",
                "subresource": attributes.subresource,
                "name": attributes.name,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_authenticated_review_names_a_user() {
        let answer = json!({"kind": "TokenReview", "status": {
            "authenticated": true,
            "user": {"username": "system:serviceaccount:dev:ci", "uid": "u-1",
                     "groups": ["system:serviceaccounts", "system:authenticated"],
                     "extra": {"authentication.kubernetes.io/pod-name": ["p"]}},
        }});
        let user = token_review_user(&answer).unwrap();
        assert_eq!(user.name, "system:serviceaccount:dev:ci");
        assert_eq!(user.uid, "u-1");
        assert_eq!(
            user.groups,
            ["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(user.extra["authentication.kubernetes.io/pod-name"], ["p"]);

        let refused = json!({"kind": "TokenReview", "status": {"user": {}}});
        assert_eq!(token_review_user(&refused), None);
        let nameless = json!({"status": {"authenticated": true, "user": {}}});
        assert_eq!(token_review_user(&nameless), None);
        let stringly = json!({"status": {"authenticated": "true", "user": {"username": "x"}}});
        assert_eq!(token_review_user(&stringly), None);
    }

    #[test]
    fn the_access_review_asks_about_the_nodes_subresource() {
        let user = User {
            name: "alice".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            ..User::default()
        };
        let attributes = Attributes::of(&axum::http::Method::POST, "/exec/ns/p/c", "n1");
        let review = access_review(&user, &attributes);
        assert_eq!(
            review["spec"]["resourceAttributes"],
            json!({"verb": "create", "group": "", "version": "v1", "resource": "nodes",
                   "subresource": "proxy", "name": "n1"})
        );
        assert_eq!(review["spec"]["user"], "alice");
        assert_eq!(
            review["spec"]["groups"],
            json!(["dev", "system:authenticated"])
        );
    }
}

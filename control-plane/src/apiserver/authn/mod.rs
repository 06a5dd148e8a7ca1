//! Authentication beyond the cluster token, as kube-apiserver's authenticators: X.509 client
//! certificates signed by the cluster CA ([`x509`]), a static token file ([`token_file`]), and
//! the reviews that expose what they decide ([`review`]: `kubectl auth whoami`, TokenReview).
//! [`super::auth`] runs them in Kubernetes' order: client certificate first, then bearer tokens.

pub mod bootstrap_token;
pub mod review;
pub mod service_account;
pub mod token_file;
pub mod token_request;
pub mod x509;

use super::auth::UserInfo;

/// The audience of tokens meant for this API server (kube-apiserver's default
/// `--api-audiences`, its service account issuer).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The group of every authenticated user, added as kube-apiserver's `AuthenticatedGroupAdder`
/// does: once, after the authenticator's own groups.
pub const AUTHENTICATED: &str = "system:authenticated";

/// `user` with [`AUTHENTICATED`] among its groups.
pub fn with_authenticated_group(mut user: UserInfo) -> UserInfo {
    if !user.groups.iter().any(|g| g == AUTHENTICATED) {
        user.groups.push(AUTHENTICATED.to_owned());
    }
    user
}

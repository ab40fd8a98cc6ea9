use tower_layer::Layer;

use super::GitHubAuth;
use crate::installation::Installation;
use crate::pool::InstallationPool;
use crate::user::UserToken;

/// Stamps requests with the tokens of a token source: [`InstallationAuthLayer`] for one [`Installation`],
/// [`AppAuthLayer`] for every installation of an App ([`InstallationPool`]). See the [module docs](crate::auth).
#[derive(Debug, Clone)]
pub struct GitHubAuthLayer<T> {
    pub(super) source: T,
    pub(super) every_response: bool,
}

/// Stamps requests with the current token of one [`Installation`].
pub type InstallationAuthLayer = GitHubAuthLayer<Installation>;

/// Stamps each request with a token of the installation it is for, from an [`InstallationPool`].
pub type AppAuthLayer = GitHubAuthLayer<InstallationPool>;

/// Stamps requests with the current access token of one user ([`UserToken`]).
pub type UserAuthLayer = GitHubAuthLayer<UserToken>;

impl GitHubAuthLayer<UserToken> {
    /// Authorizes requests with `user`'s access tokens.
    pub fn new(user: UserToken) -> Self {
        Self { source: user, every_response: false }
    }
}

impl GitHubAuthLayer<Installation> {
    /// Authorizes requests with `installation`'s tokens.
    pub fn new(installation: Installation) -> Self {
        Self { source: installation, every_response: false }
    }
}

impl GitHubAuthLayer<InstallationPool> {
    /// Authorizes each request with a token of its installation, from `pool`.
    pub fn new(pool: InstallationPool) -> Self {
        Self { source: pool, every_response: false }
    }
}

impl<T> GitHubAuthLayer<T> {
    /// Attach [`InstallationTokenUsed`](crate::InstallationTokenUsed) to every response, not only to `401` and
    /// `403` ones. Useful for logging which token served a request; costs an allocation per response (that of
    /// `http::Extensions`), which the default avoids.
    pub fn token_used_on_every_response(mut self) -> Self {
        self.every_response = true;
        self
    }

    /// The token source.
    pub fn source(&self) -> &T {
        &self.source
    }
}

#[allow(private_bounds)]
impl<S, T: crate::source::TokenSource> Layer<S> for GitHubAuthLayer<T> {
    type Service = GitHubAuth<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = GitHubAuth::with_source(inner, self.source.clone());
        service.every_response = self.every_response;
        service
    }
}

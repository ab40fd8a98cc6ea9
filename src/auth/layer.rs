use tower_layer::Layer;

use super::InstallationAuth;
use crate::installation::Installation;

/// Stamps requests with the current token of an [`Installation`]. See the [module docs](crate::auth).
#[derive(Debug, Clone)]
pub struct InstallationAuthLayer {
    installation: Installation,
    every_response: bool,
}

impl InstallationAuthLayer {
    /// Authorizes requests with `installation`'s tokens.
    pub fn new(installation: Installation) -> Self {
        Self { installation, every_response: false }
    }

    /// Attach [`InstallationTokenUsed`](crate::InstallationTokenUsed) to every response, not only to `401` and
    /// `403` ones. Useful for logging which token served a request; costs an allocation per response (that of
    /// `http::Extensions`), which the default avoids.
    pub fn token_used_on_every_response(mut self) -> Self {
        self.every_response = true;
        self
    }
}

impl<S> Layer<S> for InstallationAuthLayer {
    type Service = InstallationAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = InstallationAuth::new(inner, self.installation.clone());
        service.every_response = self.every_response;
        service
    }
}

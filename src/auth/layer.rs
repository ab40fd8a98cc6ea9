use tower_layer::Layer;

use super::InstallationAuth;
use crate::installation::Installation;

/// Stamps requests with the current token of an [`Installation`]. See the [module docs](crate::auth).
#[derive(Debug, Clone)]
pub struct InstallationAuthLayer {
    installation: Installation,
}

impl InstallationAuthLayer {
    /// Authorizes requests with `installation`'s tokens.
    pub fn new(installation: Installation) -> Self {
        Self { installation }
    }
}

impl<S> Layer<S> for InstallationAuthLayer {
    type Service = InstallationAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InstallationAuth::new(inner, self.installation.clone())
    }
}

//! A ready-made HTTPS client for real GitHub (feature `hyper-client`): hyper-util's pooled client over rustls
//! with the aws-lc-rs provider and Mozilla's root certificates, HTTP/1.1 and HTTP/2.
//!
//! Use it both to mint tokens and to send API requests, so both go through the same pool:
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_github_app::{GitHubApp, Installation, InstallationAuthLayer, client::https_client};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = https_client()?;
//! let app = GitHubApp::from_pem(12345, std::fs::read("app.pem")?)?;
//! let installation = Installation::builder(app, 67890).build(client.clone())?;
//! let github = ServiceBuilder::new().layer(InstallationAuthLayer::new(installation)).service(client);
//! # drop(github);
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::ApiBase;
use crate::error::{Error, ErrorKind};

/// The client [`https_client`] builds.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTPS-only client (no plain http, so tokens never travel unencrypted).
pub fn https_client() -> Result<HttpsClient, Error> {
    client_for(&ApiBase::github_com())
}

/// A pooled client for `api_base`, with any request body type (octocrab's, your own): HTTPS only, like
/// [`https_client`], unless `api_base` is plain http, which [`ApiBase::parse`] accepts on loopback addresses only
/// (a local test server such as [`FakeGitHub`](crate::testing)); then plain http too.
///
/// ```
/// use tower_github_app::{ApiBase, client::client_for};
/// # fn main() -> Result<(), tower_github_app::Error> {
/// let client = client_for::<http_body_util::Full<bytes::Bytes>>(&ApiBase::github_com())?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
pub fn client_for<B>(api_base: &ApiBase) -> Result<Client<HttpsConnector<HttpConnector>, B>, Error>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| Error::build(ErrorKind::InvalidConfig, "could not configure TLS").source(e).finish())?;
    let builder = if api_base.is_plain_http() { builder.https_or_http() } else { builder.https_only() };
    let connector = builder.enable_http1().enable_http2().build();
    Ok(Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector))
}

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

use crate::error::{Error, ErrorKind};

/// The client [`https_client`] builds.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTPS-only client (no plain http, so tokens never travel unencrypted).
pub fn https_client() -> Result<HttpsClient, Error> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| Error::build(ErrorKind::InvalidConfig, "could not configure TLS").source(e).finish())?
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector))
}

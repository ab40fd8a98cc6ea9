//! `InstallationAuth`'s contract as a tower middleware, with `tower-test` mocks as the inner service.

mod common;

use std::task::Poll;

use bytes::Bytes;
use common::get;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_github_app::testing::FakeGitHub;
use tower_github_app::{Error, ErrorKind, Installation, InstallationAuthLayer, InstallationTokenUsed};
use tower_test::mock;

type Mock = mock::Mock<Request<Full<Bytes>>, Response<&'static str>>;
type Handle = mock::Handle<Request<Full<Bytes>>, Response<&'static str>>;

async fn setup() -> (FakeGitHub, Installation, tower_github_app::InstallationAuth<Mock>, Handle) {
    let github = FakeGitHub::start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    let (inner, handle) = mock::pair();
    let service = InstallationAuthLayer::new(installation.clone()).token_used_on_every_response().layer(inner);
    (github, installation, service, handle)
}

#[tokio::test]
async fn poll_ready_is_forwarded() {
    let (_github, _installation, service, mut handle) = setup().await;
    let mut service = tower_test::mock::Spawn::new(service);
    handle.allow(0);
    assert!(service.poll_ready().is_pending());
    handle.allow(1);
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
}

#[tokio::test]
async fn requests_to_the_api_get_the_sensitive_token_and_responses_say_which() {
    let (github, installation, service, mut handle) = setup().await;
    handle.allow(2);
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    let call = tokio::spawn(service.clone().oneshot(get(&url)));
    let (request, respond) = handle.next_request().await.unwrap();
    let token = installation.token().await.unwrap();
    let authorization = request.headers().get(AUTHORIZATION).unwrap();
    assert!(authorization.is_sensitive());
    assert_eq!(authorization.to_str().unwrap(), format!("Bearer {}", token.expose_secret()));
    assert!(format!("{:?}", request.headers()).contains("Sensitive"));
    respond.send_response(Response::new("ok"));
    let response = call.await.unwrap().unwrap();
    let used = response.extensions().get::<InstallationTokenUsed>().unwrap();
    assert_eq!(used.serial(), token.serial());
    assert_eq!(used.installation_id(), FakeGitHub::INSTALLATION_ID);

    // A second request takes the hot path: same token, no new mint.
    let call = tokio::spawn(service.oneshot(get(&url)));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()[AUTHORIZATION], token.authorization());
    respond.send_response(Response::new("ok"));
    call.await.unwrap().unwrap();
    assert_eq!(github.mint_count(), 1);
    assert_eq!(installation.stats().waited_requests, 1);
}

#[tokio::test]
async fn other_hosts_never_see_the_token() {
    let (github, installation, service, mut handle) = setup().await;
    installation.token().await.unwrap();
    handle.allow(4);
    let port = github.addr().port();
    for url in [
        format!("http://127.0.0.2:{port}/repos/o/r"),
        format!("http://localhost:{port}/repos/o/r"),
        format!("https://127.0.0.1:{port}/repos/o/r"),
        "https://objects.githubusercontent.com/file".to_owned(),
    ] {
        let call = tokio::spawn(service.clone().oneshot(get(&url)));
        let (request, respond) = handle.next_request().await.unwrap();
        assert!(request.headers().get(AUTHORIZATION).is_none(), "{url}");
        respond.send_response(Response::new("ok"));
        let response = call.await.unwrap().unwrap();
        assert!(response.extensions().get::<InstallationTokenUsed>().is_none());
    }
}

#[tokio::test]
async fn an_authorization_set_by_the_caller_is_kept() {
    let (github, installation, service, mut handle) = setup().await;
    handle.allow(1);
    let jwt = installation.app().jwt().await.unwrap();
    let request = Request::get(format!("{}/app", github.api_base()))
        .header(AUTHORIZATION, jwt.authorization())
        .body(Full::default())
        .unwrap();
    let call = tokio::spawn(service.oneshot(request));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()[AUTHORIZATION], jwt.authorization());
    respond.send_response(Response::new("ok"));
    call.await.unwrap().unwrap();
    assert_eq!(github.mint_count(), 0, "no installation token was needed");
}

#[tokio::test]
async fn a_request_without_a_host_is_refused_and_not_sent() {
    let (_github, _installation, service, mut handle) = setup().await;
    handle.allow(1);
    let error = service.oneshot(get("/repos/octo-org/octo-repo")).await.unwrap_err();
    let error = error.downcast::<Error>().unwrap();
    assert_eq!(error.kind(), ErrorKind::InvalidRequest);
    assert!(error.to_string().contains("absolute URIs"));
    drop(handle.next_request());
}

#[tokio::test]
async fn the_inner_services_error_passes_through() {
    let (github, _installation, service, mut handle) = setup().await;
    handle.allow(1);
    let call = tokio::spawn(service.oneshot(get(&format!("{}/app", github.api_base()))));
    let (_request, respond) = handle.next_request().await.unwrap();
    respond.send_error(std::io::Error::other("connection reset"));
    let error = call.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
}

#[tokio::test]
async fn app_routes_get_the_app_jwt_and_say_so() {
    let (github, installation, service, mut handle) = setup().await;
    handle.allow(2);
    for path in ["/app/installations", "/repos/octo-org/octo-repo/installation"] {
        let call = tokio::spawn(service.clone().oneshot(get(&format!("{}{path}", github.api_base()))));
        let (request, respond) = handle.next_request().await.unwrap();
        let authorization = request.headers().get(AUTHORIZATION).unwrap();
        assert!(authorization.is_sensitive());
        assert!(authorization.to_str().unwrap().starts_with("Bearer eyJ"), "{path}");
        respond.send_response(Response::new("ok"));
        let response = call.await.unwrap().unwrap();
        let used = response.extensions().get::<tower_github_app::AppJwtUsed>().unwrap();
        assert_eq!(used.app_id(), installation.app().id());
        assert!(!format!("{used:?}").contains("eyJ"));
    }
    assert_eq!(github.mint_count(), 0, "App routes need no installation token");
    assert_eq!(installation.app().jwt_signatures(), 1, "one JWT served both");
}

#[tokio::test]
async fn by_default_only_refusals_carry_the_token_used_extension() {
    let github = FakeGitHub::start().await;
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    let (inner, mut handle): (Mock, Handle) = mock::pair();
    let service = InstallationAuthLayer::new(installation).layer(inner);
    handle.allow(2);
    let url = format!("{}/repos/octo-org/octo-repo", github.api_base());
    for (status, expected) in [(200, false), (401, true)] {
        let call = tokio::spawn(service.clone().oneshot(get(&url)));
        let (_request, respond) = handle.next_request().await.unwrap();
        respond.send_response(Response::builder().status(status).body("").unwrap());
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.extensions().get::<InstallationTokenUsed>().is_some(), expected, "{status}");
    }
}

/// Route names in any case and with a trailing slash keep the credential GitHub needs; dot segments are resolved
/// before the route is classified, so a path that resolves to an installation route never gets the App JWT, and
/// one that resolves to an App route gets it.
#[tokio::test]
async fn routes_are_classified_as_a_server_resolves_them() {
    let (github, _installation, service, mut handle) = setup().await;
    for (path, app_jwt) in [
        ("/APP", true),
        ("/app/", true),
        ("/App/Installations", true),
        ("/REPOS/octo-org/octo-repo/INSTALLATION/", true),
        ("/orgs/../installation", false),
        ("/orgs/%2e%2e/installation", false),
        ("/repos/octo-org/octo-repo/%2e%2e/%2E%2E/../app", true),
        ("/repos/octo-org/octo-repo", false),
    ] {
        handle.allow(1);
        let call = tokio::spawn(service.clone().oneshot(get(&format!("{}{path}", github.api_base()))));
        let (request, respond) = handle.next_request().await.unwrap();
        let authorization = request.headers().get(AUTHORIZATION).unwrap().to_str().unwrap().to_owned();
        respond.send_response(Response::new("ok"));
        call.await.unwrap().unwrap();
        let expected = if app_jwt { "Bearer eyJ" } else { "Bearer ghs_" };
        assert!(authorization.starts_with(expected), "{path}: {}", &authorization[..11]);
    }
}

/// `api.github.com.` is `api.github.com`: a host written with its trailing dot gets the token, and one that
/// merely starts like the API's host does not.
#[tokio::test]
async fn a_host_with_a_trailing_dot_is_the_same_host() {
    let github = FakeGitHub::start().await;
    let port = github.addr().port();
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&format!("http://localhost:{port}"))
        .build(github.client())
        .unwrap();
    let (inner, mut handle): (Mock, Handle) = mock::pair();
    let service = InstallationAuthLayer::new(installation).layer(inner);
    for (url, stamped) in [
        (format!("http://localhost.:{port}/repos/octo-org/octo-repo"), true),
        (format!("http://LOCALHOST:{port}/repos/octo-org/octo-repo"), true),
        (format!("http://localhost.evil:{port}/repos/octo-org/octo-repo"), false),
        (format!("http://localhost:{}/repos/octo-org/octo-repo", port + 1), false),
    ] {
        handle.allow(1);
        let call = tokio::spawn(service.clone().oneshot(get(&url)));
        let (request, respond) = handle.next_request().await.unwrap();
        assert_eq!(request.headers().contains_key(AUTHORIZATION), stamped, "{url}");
        respond.send_response(Response::new("ok"));
        call.await.unwrap().unwrap();
    }
}

/// Release assets go to the uploads origin (`uploads.github.com`; here the fake's second port) and need the
/// installation token there too.
#[tokio::test]
async fn release_asset_uploads_carry_the_installation_token() {
    use tower_github_app::testing::{Credential, TokenState};
    let github = FakeGitHub::start().await;
    let url = format!("{}/repos/octo-org/octo-repo/releases/1/assets?name=app.zip", github.uploads_base());
    let upload = || Request::post(&url).body(Full::new(Bytes::from_static(b"PK\x03\x04"))).unwrap();

    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .uploads_base(&github.uploads_base())
        .build(github.client())
        .unwrap();
    let service = InstallationAuthLayer::new(installation).layer(github.client());
    let response = service.oneshot(upload()).await.unwrap();
    assert_eq!(response.status(), 201);

    // Without the uploads origin configured, a loopback API has none: the token stays home.
    let installation = Installation::builder(github.app(), FakeGitHub::INSTALLATION_ID)
        .api_base(&github.api_base())
        .build(github.client())
        .unwrap();
    let response = InstallationAuthLayer::new(installation).layer(github.client()).oneshot(upload()).await.unwrap();
    assert_eq!(response.status(), 401);

    let uploads: Vec<_> = github.requests().into_iter().filter(|r| r.uploads).collect();
    assert_eq!(uploads.len(), 2);
    assert!(matches!(uploads[0].credential, Credential::InstallationToken { state: TokenState::Valid, .. }));
    assert_eq!(uploads[1].credential, Credential::None);
}

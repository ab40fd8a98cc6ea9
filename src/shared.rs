#![cfg_attr(not(feature = "redis"), allow(dead_code))]
//! The seam between the sources that mint installation tokens and a store that several processes share (the
//! `redis` feature's [`RedisStore`](crate::redis::RedisStore)): before minting, a source asks the store for a
//! token another process minted, or for the lease to mint one itself.
//!
//! Owns: the key a token is shared under (origin, App, installation, scope: never a secret), a token's
//! fingerprint, and the trait the store implements. Knows nothing of Redis. The hot path never comes here: only
//! a mint does.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::HeaderValue;

use crate::app::{AppId, GitHubApp};
use crate::installation::mint::{MintParams, Minted};
use crate::installation::token::TokenEntry;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a token is shared under: the App, the API origin (128 bits of its SHA-256, so that GitHub.com and a GHES
/// host never mix), the installation and the scope (hashed). Readable in `redis-cli` and free of secrets. The
/// whole origin is bound to every stored value too (see the store's sealing), so even a colliding hash opens
/// nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct SharedKey {
    pub(crate) id: String,
    /// The API base, as the pool or source sends requests to it.
    pub(crate) origin: String,
}

impl SharedKey {
    pub(crate) fn for_mint(app: &GitHubApp, params: &MintParams) -> SharedKey {
        let app_part = match app.id() {
            AppId::Id(id) => id.to_string(),
            AppId::ClientId(client) if client.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') => client.clone(),
            AppId::ClientId(client) => hex(&digest(client.as_bytes())[..8]),
        };
        let origin = params.api_base.to_string();
        let origin_hash = hex(&digest(origin.as_bytes())[..16]);
        let scope = match &params.body {
            None => "all".to_owned(),
            Some(body) => hex(&digest(body)[..8]),
        };
        SharedKey { id: format!("app:{app_part}:{origin_hash}:inst:{}:{scope}", params.installation_id), origin }
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// A token's identity across processes: the first 16 bytes of SHA-256 of its `Authorization` value. Says
/// nothing usable about the token.
pub(crate) type Fingerprint = [u8; 16];

pub(crate) fn fingerprint(authorization: &HeaderValue) -> Fingerprint {
    let mut out = [0; 16];
    out.copy_from_slice(&digest(authorization.as_bytes())[..16]);
    out
}

/// The fingerprints of a source's current and previous tokens: a shared store must not hand either back (one is
/// due, or GitHub refused it).
pub(crate) fn known(
    current: &arc_swap::ArcSwapOption<TokenEntry>,
    previous: &arc_swap::ArcSwapOption<TokenEntry>,
) -> [Option<Fingerprint>; 2] {
    [current, previous].map(|token| token.load().as_ref().map(|token| fingerprint(&token.authorization)))
}

pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a source asks the shared store for before minting.
pub(crate) struct Obtain<'a> {
    pub(crate) key: &'a SharedKey,
    /// Tokens not to take even if fresh: the one being replaced and one GitHub refused.
    pub(crate) avoid: [Option<Fingerprint>; 2],
    /// How long before expiry this source refreshes (before its jitter): a stored token closer to its end than
    /// that is due, not shared.
    pub(crate) refresh_before: Duration,
    /// GitHub's clock minus the local one, in seconds (the App's).
    pub(crate) clock_offset: i64,
    /// The longest one mint may take here (both attempts of a clock-corrected mint): a waiter waits at most about
    /// that long for another holder that keeps its lease.
    pub(crate) mint_budget: Duration,
    /// What the source holds to mint (a pool's mint permit): given back while this process waits for another
    /// one's mint, and taken again before each claim, so that a lease is only ever taken with it in hand.
    pub(crate) turn: &'a dyn Turn,
}

/// A source's right to mint now (a pool's mint permit), which a process must hold whenever it claims.
pub(crate) trait Turn: Send + Sync {
    /// Gives it back, while this process waits for another one's mint.
    fn pause(&self);
    /// Takes it again (waits for it), before the next claim.
    fn resume(&self) -> BoxFuture<'_, ()>;
}

/// The turn of a source that mints whenever it needs (a single installation).
pub(crate) struct AlwaysTurn;

impl Turn for AlwaysTurn {
    fn pause(&self) {}

    fn resume(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The store's answer.
pub(crate) enum Obtained {
    /// A fresh token another process minted.
    Adopted(Minted),
    /// The lease is this process's: mint, then [`publish`](SharedTokens::publish) (or release on failure).
    Lease(Lease),
    /// Mint without the fleet: the store is unreachable, or the holder of the lease did not deliver in time.
    Local,
}

/// The right to mint for a key, until the store's lease ends.
pub(crate) struct Lease {
    pub(crate) key: SharedKey,
    /// The lease's fencing value: the store writes the minted token only while the lease still holds it.
    pub(crate) fence: String,
}

/// A store of installation tokens shared by processes. The [`RedisStore`](crate::redis::RedisStore) implements it.
pub(crate) trait SharedTokens: Send + Sync + 'static {
    /// A token another process minted, the lease to mint one, or `Local`. Never fails: a store that cannot answer
    /// says `Local`.
    fn obtain<'a>(&'a self, want: Obtain<'a>) -> BoxFuture<'a, Obtained>;

    /// Shares `minted` under the lease's key (if the lease is still this process's) and wakes the waiters.
    fn publish<'a>(&'a self, lease: Lease, minted: &'a Minted) -> BoxFuture<'a, ()>;

    /// Gives the lease back after a failed mint, waking the waiters so that one of them tries.
    fn release(&self, lease: Lease) -> BoxFuture<'_, ()>;

    /// Drops the stored token for `key` if it is the one with fingerprint `fp` (it was revoked), and tells the
    /// waiters.
    fn forget<'a>(&'a self, key: &'a SharedKey, fp: Fingerprint) -> BoxFuture<'a, ()>;

    /// Extends the lease while its holder mints.
    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, ()>;

    /// How often a holder renews its lease.
    fn renew_every(&self) -> Duration;

    /// The longest [`mint_through`] may take with this store, for a mint timeout of `mint_timeout`: the wait for
    /// another holder, a mint here, and the store's calls.
    fn budget(&self, mint_timeout: Duration) -> Duration;
}

/// The longest one mint may take (both attempts of a clock-corrected mint, and a moment).
pub(crate) fn mint_budget(mint_timeout: Duration) -> Duration {
    mint_timeout * 2 + Duration::from_secs(1)
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Minted by this process on its own (no store, the store unavailable, or another holder too slow).
    Minted,
    /// Minted by this process under the store's lease, and shared.
    ForFleet,
    /// Minted by another process and taken from the store.
    Adopted,
}

impl Origin {
    /// Whether other processes may hold the token too.
    pub(crate) fn shared(self) -> bool {
        self != Origin::Minted
    }
}

/// A token for `params`: from the store if another process minted one this process would not refresh yet,
/// otherwise minted by `mint` (under the store's lease when the store answers, then shared).
pub(crate) async fn mint_through<F, Fut>(
    store: &dyn SharedTokens,
    app: &GitHubApp,
    params: &MintParams,
    avoid: [Option<Fingerprint>; 2],
    refresh_before: Duration,
    turn: &dyn Turn,
    mint: F,
) -> Result<(Minted, Origin), crate::Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Minted, crate::Error>>,
{
    let key = SharedKey::for_mint(app, params);
    let want = Obtain {
        key: &key,
        avoid,
        refresh_before,
        clock_offset: app.clock_offset(),
        mint_budget: mint_budget(params.timeout),
        turn,
    };
    match store.obtain(want).await {
        Obtained::Adopted(minted) => Ok((minted, Origin::Adopted)),
        Obtained::Local => mint().await.map(|minted| (minted, Origin::Minted)),
        Obtained::Lease(lease) => {
            // The lease is renewed while the mint runs: a holder that dies stops renewing, and its lease soon ends.
            let mint = mint();
            tokio::pin!(mint);
            let minted = loop {
                tokio::select! {
                    biased;
                    minted = &mut mint => break minted,
                    () = tokio::time::sleep(store.renew_every()) => {}
                }
                tokio::select! {
                    biased;
                    minted = &mut mint => break minted,
                    () = store.renew(&lease) => {}
                }
            };
            match &minted {
                Ok(minted) => store.publish(lease, minted).await,
                Err(_) => store.release(lease).await,
            }
            minted.map(|minted| (minted, Origin::ForFleet))
        }
    }
}

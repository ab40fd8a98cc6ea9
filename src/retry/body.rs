//! Which request bodies can be cloned for a retry.

use std::any::Any;
use std::fmt;

use bytes::Bytes;
use http_body_util::{Empty, Full};

/// Makes the copy of a request body that a retry sends. A body that cannot be copied (a stream) returns `None`,
/// and its request is sent once: a `401` on it is returned as it came.
///
/// [`BuiltinBodies`] (the default) copies what is cheap to copy; [`RetryOn401PolicyBuilder::clone_body_fn`]
/// plugs in a function for your own body type, as tower-http's `FollowRedirect` does.
///
/// [`RetryOn401PolicyBuilder::clone_body_fn`]: super::RetryOn401PolicyBuilder::clone_body_fn
pub trait CloneBody<B> {
    /// A copy of `body`, or `None` if it cannot be copied.
    fn clone_body(&self, body: &B) -> Option<B>;
}

/// Copies empty bodies (any type whose size hint is exactly 0 and that has a `Default`), `Full<Bytes>`,
/// `String`, `Bytes`, `Vec<u8>` and `Empty<Bytes>`; nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinBodies;

impl<B> CloneBody<B> for BuiltinBodies
where
    B: http_body::Body + Default + 'static,
{
    #[inline]
    fn clone_body(&self, body: &B) -> Option<B> {
        if body.size_hint().exact() == Some(0) {
            return Some(B::default());
        }
        let any = body as &dyn Any;
        fn copy<T: Clone + 'static, B: 'static>(any: &dyn Any) -> Option<B> {
            let body: Box<dyn Any> = Box::new(any.downcast_ref::<T>()?.clone());
            body.downcast::<B>().ok().map(|b| *b)
        }
        copy::<Full<Bytes>, B>(any)
            .or_else(|| copy::<String, B>(any))
            .or_else(|| copy::<Bytes, B>(any))
            .or_else(|| copy::<Vec<u8>, B>(any))
            .or_else(|| copy::<Empty<Bytes>, B>(any))
    }
}

/// A [`CloneBody`] made from a function, from [`RetryOn401PolicyBuilder::clone_body_fn`].
///
/// [`RetryOn401PolicyBuilder::clone_body_fn`]: super::RetryOn401PolicyBuilder::clone_body_fn
#[derive(Clone, Copy)]
pub struct CloneBodyFn<F>(pub(super) F);

impl<B, F> CloneBody<B> for CloneBodyFn<F>
where
    F: Fn(&B) -> Option<B>,
{
    fn clone_body(&self, body: &B) -> Option<B> {
        (self.0)(body)
    }
}

impl<F> fmt::Debug for CloneBodyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneBodyFn").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::combinators::BoxBody;

    #[test]
    fn cheap_bodies_clone_streaming_ones_do_not() {
        let full = Full::new(Bytes::from_static(b"{}"));
        assert!(BuiltinBodies.clone_body(&full).is_some());
        assert!(BuiltinBodies.clone_body(&String::from("x")).is_some());
        let streaming: BoxBody<Bytes, std::convert::Infallible> = Full::new(Bytes::from_static(b"data")).boxed();
        assert!(BuiltinBodies.clone_body(&streaming).is_none());
        let empty: BoxBody<Bytes, std::convert::Infallible> = Empty::new().boxed();
        assert!(BuiltinBodies.clone_body(&empty).is_some());
        let own = CloneBodyFn(|b: &u32| Some(*b));
        assert_eq!(own.clone_body(&7), Some(7));
    }
}

//! Which request bodies can be cloned for a retry.

use std::any::Any;

use bytes::Bytes;
use http_body_util::{Empty, Full};

/// A copy of `body` if it is empty or of a cheaply cloneable type; `None` for streaming bodies.
pub(super) fn clone_body<B>(body: &B) -> Option<B>
where
    B: http_body::Body + Default + 'static,
{
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::combinators::BoxBody;

    #[test]
    fn cheap_bodies_clone_streaming_ones_do_not() {
        let full = Full::new(Bytes::from_static(b"{}"));
        assert!(clone_body(&full).is_some());
        assert!(clone_body(&String::from("x")).is_some());
        let streaming: BoxBody<Bytes, std::convert::Infallible> = Full::new(Bytes::from_static(b"data")).boxed();
        assert!(clone_body(&streaming).is_none());
        let empty: BoxBody<Bytes, std::convert::Infallible> = Empty::new().boxed();
        assert!(clone_body(&empty).is_some());
    }
}

//! Text a command owns without copying it: a slice of the request's frame.

use std::ops::Deref;

use bytes::Bytes;

/// UTF-8 text held as `Bytes`: when it comes from a request frame, a shared slice of that frame
/// (a reference count, no allocation, however long the key), so that a command can own its keys
/// and move into a task without the read path copying them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

impl Text {
    /// `text`, which points into `frame`, as a slice of it (a copy if it does not point there).
    pub fn shared(frame: &Bytes, text: &str) -> Text {
        Text(share(frame, text.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: a `Text` is only ever built from the bytes of a `&str` (`shared`, `From<&str>`),
        // so its bytes are UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

/// The part of `frame` that `part` points at, shared rather than copied; a copy if `part` is not
/// inside `frame` (it always is when it was decoded from it).
pub(super) fn share(frame: &Bytes, part: &[u8]) -> Bytes {
    let start = frame.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    if part.is_empty() || at < start || at + part.len() > start + frame.len() {
        Bytes::copy_from_slice(part)
    } else {
        frame.slice_ref(part)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_a_frame_shares_it() {
        let frame = Bytes::from_static(b"....a-key-longer-than-twenty-four-bytes....");
        let inside = std::str::from_utf8(&frame[4..39]).unwrap();
        let text = Text::shared(&frame, inside);
        assert_eq!(text.as_str(), "a-key-longer-than-twenty-four-bytes");
        assert_eq!(
            text.as_ptr(),
            inside.as_ptr(),
            "a slice of the frame, not a copy"
        );
        let elsewhere = Text::shared(&frame, "not in the frame");
        assert_eq!(&*elsewhere, "not in the frame");
    }
}

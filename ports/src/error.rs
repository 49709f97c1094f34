//! What the port errors carry: the adapter's own error as a [`Cause`], kept
//! whole for the log, and [`Chain`] to print an error with its sources.
//!
//! Port errors are values the application matches on by variant; the
//! cause is for operators only. Clients never see it: they get the
//! protocol's code and a fixed message.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// An adapter's error, the source of a port error. Shared (an `Arc`), so
/// a port error stays `Clone` for the callers that answer several waiters
/// with one failure.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps an adapter's error.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(error))
    }

    /// A cause that is only a description (the adapter found the fault
    /// itself, with no error value of a library behind it).
    pub fn msg(text: impl Into<String>) -> Cause {
        Cause(Arc::new(Message(text.into())))
    }

    /// The wrapped error.
    pub fn get(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// Two causes are equal when they say the same: what tests compare when
/// they expect one port error.
impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

/// Displays an error and each of its sources, `outer: inner: innermost`:
/// what a log line shows of a failure.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Cause);

    #[test]
    fn a_chain_shows_every_source_in_order() {
        let io = std::io::Error::other("disk on fire");
        let e = Outer(Cause::new(io));
        assert_eq!(Chain(&e).to_string(), "outer: disk on fire");
        assert_eq!(e.to_string(), "outer", "the display leaves the source out");
    }

    #[test]
    fn a_message_cause_is_its_text() {
        let e = Outer(Cause::msg("no such row"));
        assert_eq!(Chain(&e).to_string(), "outer: no such row");
    }
}

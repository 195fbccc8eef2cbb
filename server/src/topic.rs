//! Topic names and the permission patterns that tokens carry.

/// Why a topic name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than the configured maximum.
    #[error("topic name is longer than {0} bytes")]
    TooLong(usize),
    /// The name contains a control character (including newlines).
    #[error("topic name contains a control character")]
    ControlCharacter,
}

/// Check a topic name: non-empty, at most `max_len` bytes (`max_topic_len`), no control
/// characters. Anything else is allowed, so the template's clients keep their topic names.
///
/// # Errors
/// [`TopicError`] naming the rule the name breaks.
pub fn validate(name: &str, max_len: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        Err(TopicError::Empty)
    } else if name.len() > max_len {
        Err(TopicError::TooLong(max_len))
    } else if name.chars().any(char::is_control) {
        Err(TopicError::ControlCharacter)
    } else {
        Ok(())
    }
}

/// A set of glob patterns (`*`, `?`, `[...]`) from a token claim; absent means "any topic".
#[derive(Debug, Clone, Default)]
pub struct Patterns(Option<Vec<glob::Pattern>>);

impl Patterns {
    /// Build from a claim. Patterns that do not parse match nothing (fail closed).
    pub fn from_claim(claim: Option<Vec<String>>) -> Self {
        Patterns(claim.map(|list| {
            list.iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect()
        }))
    }

    /// Whether `topic` matches one of the patterns (always, when unrestricted).
    pub fn allows(&self, topic: &str) -> bool {
        match &self.0 {
            None => true,
            Some(list) => list.iter().any(|p| p.matches(topic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate("chat", 256), Ok(()));
        assert_eq!(validate("chat room/1 ✓", 256), Ok(()));
        assert_eq!(validate("", 256), Err(TopicError::Empty));
        assert_eq!(validate("a\nb", 256), Err(TopicError::ControlCharacter));
        assert_eq!(
            validate(&"x".repeat(257), 256),
            Err(TopicError::TooLong(256))
        );
    }

    #[test]
    fn patterns() {
        let p = Patterns::from_claim(Some(vec!["chat.*".into(), "user-[ab]".into(), "[".into()]));
        assert!(p.allows("chat.x"));
        assert!(p.allows("user-a"));
        assert!(!p.allows("user-c"));
        assert!(!p.allows("["), "an invalid pattern matches nothing");
        assert!(Patterns::from_claim(None).allows("anything"));
        assert!(!Patterns::from_claim(Some(vec![])).allows("anything"));
    }
}

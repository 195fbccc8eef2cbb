//! Topic names and the permission patterns that tokens carry.

use crate::config::Config;

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

/// Check a topic name: non-empty, at most `max_topic_len` bytes, no control characters.
/// Anything else is allowed, so the template's clients keep their topic names.
pub fn validate(name: &str, config: &Config) -> Result<(), TopicError> {
    if name.is_empty() {
        Err(TopicError::Empty)
    } else if name.len() > config.max_topic_len {
        Err(TopicError::TooLong(config.max_topic_len))
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
        let c = Config::default();
        assert_eq!(validate("chat", &c), Ok(()));
        assert_eq!(validate("chat room/1 ✓", &c), Ok(()));
        assert_eq!(validate("", &c), Err(TopicError::Empty));
        assert_eq!(validate("a\nb", &c), Err(TopicError::ControlCharacter));
        let long = "x".repeat(c.max_topic_len + 1);
        assert_eq!(
            validate(&long, &c),
            Err(TopicError::TooLong(c.max_topic_len))
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

//! Which topics are stored, and for how long.
//!
//! Topics matching an ephemeral pattern are pure pub/sub: nothing stored, no offsets. Every
//! other topic is durable, trimmed in the background to the first matching rule's limits (or
//! the defaults).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A per-pattern retention rule, as written in the TOML config (`[[retention]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Topic glob (`*`, `?`, `[ab]`).
    pub pattern: String,
    /// Keep at most this many messages per topic (0 = no count limit).
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// Keep messages at most this old, e.g. `"7d"`.
    #[serde(default, with = "opt_duration")]
    pub max_age: Option<Duration>,
}

/// The limits that apply to one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages kept (None: unlimited).
    pub max_messages: Option<u64>,
    /// Oldest message kept (None: unlimited).
    pub max_age: Option<Duration>,
}

/// Compiled retention settings.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    ephemeral: Vec<glob::Pattern>,
    rules: Vec<(glob::Pattern, Limits)>,
    default: Option<Limits>,
}

impl Retention {
    /// Compile patterns; a pattern that does not parse is reported by the caller's validation.
    pub fn new(
        ephemeral: &[String],
        rules: &[RetentionRule],
        default_max_messages: u64,
        default_max_age: Option<Duration>,
    ) -> Result<Self, glob::PatternError> {
        let ephemeral = ephemeral
            .iter()
            .map(|p| glob::Pattern::new(p))
            .collect::<Result<_, _>>()?;
        let rules = rules
            .iter()
            .map(|r| {
                Ok((
                    glob::Pattern::new(&r.pattern)?,
                    Limits {
                        max_messages: r.max_messages.filter(|n| *n > 0),
                        max_age: r.max_age,
                    },
                ))
            })
            .collect::<Result<_, glob::PatternError>>()?;
        Ok(Retention {
            ephemeral,
            rules,
            default: Some(Limits {
                max_messages: (default_max_messages > 0).then_some(default_max_messages),
                max_age: default_max_age,
            }),
        })
    }

    /// Whether `topic` is pure pub/sub (nothing stored).
    pub fn is_ephemeral(&self, topic: &str) -> bool {
        self.ephemeral.iter().any(|p| p.matches(topic))
    }

    /// The limits for a durable topic.
    pub fn limits(&self, topic: &str) -> Limits {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, l)| *l)
            .or(self.default)
            .unwrap_or(Limits {
                max_messages: None,
                max_age: None,
            })
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_then_default() {
        let r = Retention::new(
            &["presence.*".into()],
            &[RetentionRule {
                pattern: "chat.*".into(),
                max_messages: Some(10),
                max_age: None,
            }],
            1000,
            Some(Duration::from_secs(60)),
        )
        .expect("patterns");
        assert!(r.is_ephemeral("presence.room"));
        assert!(!r.is_ephemeral("chat.room"));
        assert_eq!(r.limits("chat.room").max_messages, Some(10));
        assert_eq!(r.limits("orders").max_messages, Some(1000));
        assert_eq!(r.limits("orders").max_age, Some(Duration::from_secs(60)));
    }
}
